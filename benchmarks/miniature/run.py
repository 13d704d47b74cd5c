"""The NaRA paper's comparison in miniature: eight methods at matched trainable budgets on `dllm-tiny`, 3 seeds each.

    python benchmarks/miniature/run.py            # full: 2 built-in tasks, 400 steps, 128 test prompts
    python benchmarks/miniature/run.py --quick    # lastdigit only, 100 steps, 32 test prompts

One torch thread; the JSON records the CPU seconds (what the run costs on an idle core) and the wall seconds.

Every run is the user's own commands, invoked in this process through the Typer app (torch is imported once):
`dllm-peft train --method M --rank R [--adapter-option K=V …] --data builtin:T --max-steps S --seed s`, then
`dllm-peft eval --adapter … --tasks T --limit N --no-compare-base --gen-length 8 --output eval.json`. Exact match
comes from eval's JSON, the validation loss at each fixed λ from the last validation line of the run's
`metrics.jsonl`, the trainable count from the trained adapter injected into the base (what `inspect --model`
reports). The base model is scored once per task with the same eval settings. Budgets: `budgets.py`.

Writes `benchmarks/results/miniature.json` (schema in `benchmarks/miniature/README.md`) and, next to it,
`miniature_val_loss_vs_noise.png` and `miniature_norms_nara_vs_lora.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from budgets import ARMS, MODEL, match, trainable_count  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dllm_peft.adapters.summary import adapter_in_backbone, summarize  # noqa: E402
from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.cli import app  # noqa: E402
from dllm_peft.models import load_backbone  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "miniature.json"
SEEDS = (0, 1, 2)
LR = 3e-3  # the train default
GEN_LENGTH = 8  # the answers of lastdigit and addition are 1–3 characters; 8 tokens leave room for the EOS
TARGET = ("nara", 8)  # the budget: NaRA at rank 8, hypernetwork included
MODES = {
    "full": {"tasks": ("lastdigit", "addition"), "steps": 400, "eval_limit": 128},
    "quick": {"tasks": ("lastdigit",), "steps": 100, "eval_limit": 32},
}


def cli(arguments: list[str], log: Path) -> None:
    """Run `dllm-peft <arguments>` in this process, its output to `log`; a failure raises, naming the log."""
    stream = io.StringIO()
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            app(arguments, prog_name="dllm-peft", standalone_mode=False)
    except BaseException as error:
        log.write_text(stream.getvalue())
        raise RuntimeError(f"dllm-peft {' '.join(arguments)} failed ({error!r}); see {log}") from error
    log.write_text(stream.getvalue())


def exact_match(eval_json: Path) -> float:
    """The exact match in percent of the single task scored in `eval_json` (the adapter's, else the base's)."""
    results = json.loads(eval_json.read_text())["results"]
    scores = results.get("adapter") or results["base"]
    (score,) = scores.values()
    return 100.0 * score["value"]


def validations(metrics_jsonl: Path) -> list[dict]:
    lines = (json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip())
    return [line for line in lines if line.get("kind") == "validation"]


def one_run(arm: dict, task: str, seed: int, settings: dict, directory: Path) -> dict:
    """Train and evaluate one (method, task, seed); a finished run in `directory` is read back, not redone."""
    record_path = directory / "run.json"
    if record_path.is_file():
        return {**json.loads(record_path.read_text()), "reused": True}
    directory.mkdir(parents=True, exist_ok=True)
    adapter = directory / "adapter"
    train = ["train", "--method", arm["method"], "--data", f"builtin:{task}", "--max-steps", str(settings["steps"]),
             "--lr", str(LR), "--seed", str(seed), "--eval-every", "0", "--save-every", "0",
             "--output", str(adapter), "--overwrite"]
    if arm["rank"] is not None:
        train += ["--rank", str(arm["rank"])]
    for option in arm["options"]:
        train += ["--adapter-option", option]
    started = time.perf_counter()
    cli(train, directory / "train.log")
    train_seconds = time.perf_counter() - started
    evaluate = ["eval", "--adapter", str(adapter), "--tasks", task, "--limit", str(settings["eval_limit"]),
                "--no-compare-base", "--gen-length", str(GEN_LENGTH), "--output", str(directory / "eval.json")]
    started = time.perf_counter()
    cli(evaluate, directory / "eval.log")
    eval_seconds = time.perf_counter() - started
    checks = validations(adapter / "metrics.jsonl")
    parts = adapter_in_backbone(load_backbone(MODEL, "auto", "cpu", False), adapter)
    record = {
        "seed": seed,
        "exact_match": exact_match(directory / "eval.json"),
        "val_loss_start": checks[0]["loss_by_noise_level"],
        "val_loss_by_noise_level": checks[-1]["loss_by_noise_level"],
        "val_loss": checks[-1]["loss"],
        "trainable_parameters": parts.trainable_parameters,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "train_command": "dllm-peft " + " ".join(train),
        "eval_command": "dllm-peft " + " ".join(evaluate),
    }
    atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())
    return record


def base_score(task: str, settings: dict, directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    evaluate = ["eval", "--model", MODEL, "--tasks", task, "--limit", str(settings["eval_limit"]),
                "--gen-length", str(GEN_LENGTH), "--output", str(directory / "eval.json")]
    if not (directory / "eval.json").is_file():
        cli(evaluate, directory / "eval.log")
    return {"exact_match": exact_match(directory / "eval.json"), "command": "dllm-peft " + " ".join(evaluate)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(nara: dict, lora: dict) -> dict:
    """NaRA minus LoRA in exact-match points, against the pooled seed standard deviation of the two."""
    difference = nara["mean"] - lora["mean"]
    pooled = math.sqrt((nara["std"] ** 2 + lora["std"] ** 2) / 2)
    spread = abs(difference) / pooled if pooled > 0 else None  # None: every seed scored the same in both
    if difference == 0:
        text = "NaRA and LoRA score the same"
    elif spread is None:
        text = f"NaRA {'beats' if difference > 0 else 'trails'} LoRA, and no seed of either moved (no spread to weigh)"
    elif spread < 1:
        text = f"NaRA is {'ahead of' if difference > 0 else 'behind'} LoRA by less than the seed spread"
    elif spread < 2:
        text = f"NaRA {'beats' if difference > 0 else 'trails'} LoRA by 1–2 pooled standard deviations (weak at 3 seeds)"
    else:
        text = f"NaRA {'beats' if difference > 0 else 'trails'} LoRA by more than 2 pooled standard deviations"
    detail = (f"(NaRA {nara['mean']:.1f} ± {nara['std']:.1f} % vs LoRA {lora['mean']:.1f} ± {lora['std']:.1f} %: "
              f"{difference:+.1f} points" + (f", {spread:.2f} pooled std" if spread is not None else "") + ")")
    return {"nara_minus_lora": difference, "pooled_std": pooled, "difference_in_pooled_std": spread,
            "text": f"{text} {detail}."}


def norms_nara_vs_lora(runs_dir: Path, tasks: list[str]) -> dict:
    """‖ΔW(λ)‖_F (all modules) and ‖C(λ) − I‖_F of the seed-0 NaRA and LoRA adapters, as `inspect --model` computes."""
    series = {}
    for task in tasks:
        series[task] = {}
        for method in ("nara", "lora"):
            parts = adapter_in_backbone(load_backbone(MODEL, "auto", "cpu", False), runs_dir / task / method / "seed0" / "adapter")
            summary = summarize(parts, levels=11)
            series[task][method] = {"levels": summary.levels, "delta_w_norm": summary.total_norms,
                                    "core_deviation": summary.core_deviation}
    return series


def plot_val_loss(methods: list[dict], tasks: list[str], levels: list[str], start: dict, path: Path) -> None:
    figure = Figure(figsize=(5.5 * len(tasks), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    x = [float(level) for level in levels]
    for axis, task in zip(axes, tasks):
        axis.plot(x, [start[task][level] for level in levels], color="black", linestyle="--", label="base (step 0)")
        for entry in methods:
            by_level = entry["results"][task]["val_loss_by_noise_level"]
            axis.plot(x, [by_level[level] for level in levels], marker="o", markersize=3, label=entry["label"])
        axis.set(title=f"{task}: final validation loss, mean of 3 seeds", xlabel="noise level λ (masked fraction)",
                 ylabel="masked-diffusion loss")
        axis.set_ylim(bottom=0)
    axes[-1].legend(fontsize="small")
    _save(figure, path)


def plot_norms(norms: dict, path: Path) -> None:
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    delta, core = figure.subplots(1, 2)
    styles = ["-", "--", ":"]
    for style, (task, series) in zip(styles, norms.items()):
        for method, color in (("nara", "tab:red"), ("lora", "tab:blue")):
            entry = series[method]
            delta.plot(entry["levels"], entry["delta_w_norm"], linestyle=style, color=color, marker="o", markersize=3,
                       label=f"{'NaRA' if method == 'nara' else 'LoRA'} · {task}")
        for key, values in series["nara"]["core_deviation"].items():
            core.plot(series["nara"]["levels"], values, linestyle=style, color="tab:red", marker="o", markersize=3,
                      label=f"NaRA core {key} · {task}")
    delta.set(title="‖ΔW(λ)‖_F, all adapted modules (seed 0)", xlabel="noise level λ", ylabel="Frobenius norm")
    delta.set_ylim(bottom=0)
    delta.legend(fontsize="small")
    core.set(title="‖C(λ) − I‖_F of NaRA's core (LoRA has none: C ≡ I)", xlabel="noise level λ",
             ylabel="Frobenius norm")
    core.set_ylim(bottom=0)
    core.legend(fontsize="small")
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lastdigit only, 100 steps, 32 test prompts")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write (plots go next to it)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the runs here; finished runs found in it are read back (default: a temporary dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, cpu_started, load_started = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    mode = "quick" if args.quick else "full"
    settings = MODES[mode]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="miniature-"))
    tasks = list(settings["tasks"])

    target = trainable_count(TARGET[0], TARGET[1], ())
    arms = [match(arm, target) for arm in ARMS]
    for arm in arms:
        print(f"{arm['label']:>15}: rank {arm['rank']} {' '.join(arm['options'])} → {arm['count']:,} "
              f"({arm['ratio']:.3f} of {target:,})", flush=True)

    base = {task: base_score(task, settings, workdir / task / "base") for task in tasks}
    methods = []
    reused = 0  # runs read back from --workdir instead of trained (0 in a clean run)
    start_loss: dict[str, dict[str, list[float]]] = {task: {} for task in tasks}
    for arm in arms:
        entry = {"method": arm["method"], "label": arm["label"], "options": dict(o.split("=", 1) for o in arm["options"]),
                 "rank": arm["rank"], "trainable_parameters": None, "budget_ratio": None, "results": {}}
        for task in tasks:
            runs = [one_run(arm, task, seed, settings, workdir / task / arm["method"] / f"seed{seed}") for seed in SEEDS]
            reused += sum(bool(run.get("reused")) for run in runs)
            counts = {run["trainable_parameters"] for run in runs}
            if len(counts) != 1 or (entry["trainable_parameters"] not in (None, *counts)):
                raise RuntimeError(f"{arm['method']}: trained adapters differ in size: {sorted(counts)}")
            entry["trainable_parameters"] = runs[0]["trainable_parameters"]
            entry["budget_ratio"] = entry["trainable_parameters"] / target
            scores = [run["exact_match"] for run in runs]
            mean, std = mean_std(scores)
            levels = list(runs[0]["val_loss_by_noise_level"])
            entry["results"][task] = {
                "exact_match": scores,
                "mean": mean,
                "std": std,
                "val_loss_by_noise_level": {
                    level: statistics.mean(run["val_loss_by_noise_level"][level] for run in runs) for level in levels
                },
                "val_loss": statistics.mean(run["val_loss"] for run in runs),
                "train_seconds": [run["train_seconds"] for run in runs],
                "eval_seconds": [run["eval_seconds"] for run in runs],
            }
            for run in runs:  # step 0 is the base model whatever the method: pooled into one reference curve
                for level, loss in run["val_loss_start"].items():
                    start_loss[task].setdefault(level, []).append(loss)
            print(f"{arm['label']:>15} · {task}: {mean:.1f} ± {std:.1f} % {scores}", flush=True)
        methods.append(entry)

    by_method = {entry["method"]: entry for entry in methods}
    verdicts = {task: verdict(by_method["nara"]["results"][task], by_method["lora"]["results"][task]) for task in tasks}
    start = {task: {level: statistics.mean(values) for level, values in levels.items()}
             for task, levels in start_loss.items()}
    norms = norms_nara_vs_lora(workdir, tasks)
    plots = ["miniature_val_loss_vs_noise.png", "miniature_norms_nara_vs_lora.png"]
    folder = args.output.parent
    folder.mkdir(parents=True, exist_ok=True)
    plot_val_loss(methods, tasks, list(start[tasks[0]]), start, folder / plots[0])
    plot_norms(norms, folder / plots[1])

    record = {
        "command": "python benchmarks/miniature/run.py" + (" --quick" if args.quick else ""),
        "mode": mode,
        "wall_seconds": round(time.perf_counter() - started, 1),
        # the machine is shared: CPU seconds of this process (one torch thread) say what it costs alone
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "load_average": {"start": load_started, "end": os.getloadavg()[0], "cpus": os.cpu_count()},
        "reused_runs": reused,
        "model": MODEL,
        "tasks": tasks,
        "seeds": list(SEEDS),
        "settings": {"steps": settings["steps"], "lr": LR, "eval_limit": settings["eval_limit"],
                     "target_budget": target, "target": f"{TARGET[0]} at rank {TARGET[1]}", "gen_length": GEN_LENGTH,
                     "torch_threads": torch.get_num_threads()},
        "methods": methods,
        "base": base,
        "base_val_loss_by_noise_level": start,
        "verdict": verdicts,
        "norms": norms,
        "plots": plots,
    }
    atomic_write_bytes(args.output, (json.dumps(record, indent=1) + "\n").encode())
    for task, text in verdicts.items():
        print(f"{task}: {text['text']}")
    print(f"wrote {args.output} and {', '.join(plots)} in {record['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
