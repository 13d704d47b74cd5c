"""Both papers' method comparisons in miniature on `dllm-tiny`, designed to decide: equal rank, paired seeds, intervals.

    python benchmarks/miniature/run.py            # full (the figures of benchmarks/README.md)
    python benchmarks/miniature/run.py --quick    # 2 seeds, 20 steps, small test sets: the same JSON schema

* **NaRA paper's comparison** (NaRA, Table 1–3): LoRA, NaRA, NaRA-C, Multi-LoRA, DoRA, NaRA-DoRA, HiRA and prompt
  tuning at the **same rank** (the paper's way), on `lastdigit` and `addition` (multi-token answers). NaRA's
  hypernetwork is scaled down (`--adapter-option hidden_sizes=4`) so that it is a paper-like share of LoRA's
  parameters; NaRA with the default hypernetwork (256, 512) is its own arm.
* **LoRA-Diffusion paper's comparison** (its Tables 5–9): full fine-tuning, LoRA-Diffusion (`trajectory`, its default
  step-adaptive ranks 64/32/8), weight LoRA, Houlsby adapters, BitFit and prefix tuning on SST-2 and AG News, with
  the trainable share, the bytes of the adapter file (storage per task) and the steps to 90 % of the loss drop.

Every run is the package's own training function (`dllm_peft.training.train.train` on the settings
`resolve_train_config` builds, today's defaults for everything not named here), so improvements to training reach
this benchmark without a change to it. Within a seed every method reads the same training stream with the same
masks (`train` seeds both from `--seed`), so the methods are paired by seed.

Metrics, all on held-out test items and identical masks for every method:
1. **accuracy by log-likelihood** (primary): each candidate answer is scored with
   `dllm_peft.diffusion.likelihood.log_likelihoods` (Monte-Carlo, masks fixed by the tokens); correct when the gold
   answer scores highest;
2. **held-out masked-diffusion loss** at fixed λ bins (exactly round(λ·L) answer tokens masked, fixed masks);
3. **generative exact match** (secondary) with the default sampler on the first `generate` test prompts.

Per task: each method's mean over seeds and its paired difference to LoRA with a 95 % t-interval (`design.py`), and
the smallest difference the design can detect. Writes `benchmarks/results/miniature.json` and, next to it,
`miniature_figure1_loss_reduction.png` (NaRA's Figure 1 in miniature) and `miniature_val_loss_vs_noise.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
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

import design  # noqa: E402  (beside this file)
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tasks import load_task  # noqa: E402

from dllm_peft.adapters.files import load_adapter, weights_path  # noqa: E402
from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.config import SamplerConfig  # noqa: E402
from dllm_peft.data.records import Example, collate, derived_seed, format_prompt  # noqa: E402
from dllm_peft.diffusion.likelihood import log_likelihoods  # noqa: E402
from dllm_peft.diffusion.loss import masked_diffusion_loss  # noqa: E402
from dllm_peft.diffusion.sampler import sample  # noqa: E402
from dllm_peft.diffusion.schedule import mask_counts_at  # noqa: E402
from dllm_peft.models import load_backbone  # noqa: E402
from dllm_peft.training.recipes import resolve_train_config  # noqa: E402
from dllm_peft.training.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "miniature.json"
# ../shared/data beside the repository; a git worktree under <workplace>/wt/ finds it one level further up
DATA_DIR = next((path for path in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")
                 if path.is_dir()), ROOT.parent / "shared" / "data")
MODEL = "dllm-tiny"
RANK = 8  # the one rank of every low-rank arm (d_model 128: r/d = 1/16)
PAPER_HYPERNETWORK = "hidden_sizes=4"  # 64 → 4 → r²: 580 parameters, 1.8 % of LoRA's 32,768 at r = 8
LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # the λ bins of the held-out loss (the centres of five equal bins)
FIGURE_PLOT = "miniature_figure1_loss_reduction.png"
LOSS_PLOT = "miniature_val_loss_vs_noise.png"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method of a comparison, as `dllm-peft train` flags."""

    key: str  # unique name of the arm in the JSON
    label: str
    method: str
    rank: int | None = RANK  # None: the method has no --rank (or keeps its own default)
    options: tuple[str, ...] = ()
    lr: float | None = None  # None: the train default
    note: str = ""


LORA = Arm("lora", "LoRA", "lora")
NARA_ARMS = (
    LORA,
    Arm("nara", "NaRA (paper-like hypernetwork)", "nara", options=(PAPER_HYPERNETWORK,)),
    Arm("nara-default", "NaRA (default hypernetwork 256, 512)", "nara"),
    Arm("nara-c", "NaRA-C", "nara-c"),
    Arm("multilora", "Multi-LoRA (K = 4)", "multilora", options=("bins=4",)),
    Arm("dora", "DoRA", "dora"),
    Arm("nara-dora", "NaRA-DoRA (paper-like hypernetwork)", "nara-dora", options=(PAPER_HYPERNETWORK,)),
    Arm("hira", "HiRA", "hira"),
    Arm("prompt", "Prompt tuning (32 virtual tokens)", "prompt", rank=None),
)
LORA_DIFFUSION_ARMS = (
    LORA,
    Arm("full", "Full fine-tuning", "full", rank=None, lr=3e-4,
        note="lr 3e-4: the adapters' 3e-3 moves every weight of the model too far"),
    Arm("trajectory", "LoRA-Diffusion (step-adaptive ranks 64/32/8)", "trajectory", rank=None),
    Arm("houlsby", "Houlsby adapters (bottleneck 32)", "houlsby", rank=None),
    Arm("bitfit", "BitFit", "bitfit", rank=None),
    Arm("prefix", "Prefix tuning (32 virtual tokens)", "prefix", rank=None),
)
COMPARISONS = {
    "nara": {"title": "NaRA paper's comparison (equal rank 8)", "tasks": ("lastdigit", "addition"), "arms": NARA_ARMS},
    "lora_diffusion": {"title": "LoRA-Diffusion paper's comparison", "tasks": ("sst2", "agnews"),
                       "arms": LORA_DIFFUSION_ARMS},
}
MODES = {
    # CPU budget: about 500 CPU seconds in all on one thread (54 short-answer runs, 36 text runs); on the shared
    # 2-core machine of this project that is 20–30 min of wall time
    "full": {"seeds": (0, 1, 2), "steps": {"lastdigit": 150, "addition": 150, "sst2": 80, "agnews": 80},
             "train_count": 2000, "test_count": 200, "loss_count": 64, "generate": 16, "mc_num": 2,
             "sst2_whole_split": True},
    "quick": {"seeds": (0, 1), "steps": {"lastdigit": 20, "addition": 20, "sst2": 12, "agnews": 12},
              "train_count": 200, "test_count": 16, "loss_count": 16, "generate": 4, "mc_num": 1,
              "sst2_whole_split": False},
}


# -- one run ---------------------------------------------------------------------------------------------------------
def train_arm(arm: Arm, data_file: Path, seed: int, steps: int, output: Path) -> dict:
    """Train one (arm, task, seed) with the package's training function; returns what the training tells."""
    explicit = {"method": arm.method, "model": MODEL, "data": str(data_file), "output": str(output), "seed": seed,
                "max_steps": steps, "val_size": 0, "eval_every": 0, "save_every": 0, "overwrite": True,
                "adapter_option": arm.options}
    if arm.rank is not None:
        explicit["rank"] = arm.rank
    if arm.lr is not None:
        explicit["lr"] = arm.lr
    config = resolve_train_config(explicit)
    started = time.process_time()
    result = train(config)
    return {"losses": result.losses, "trainable_parameters": result.trainable_parameters,
            "storage_bytes": weights_path(output).stat().st_size, "train_cpu_seconds": time.process_time() - started,
            "lr": config.lr, "batch_size": config.batch_size}


def encoded(backbone, items: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, gold response ids + EOS) of each item, tokenised as training tokenises."""
    return [(backbone.encode(format_prompt(backbone.tokenizer, item["prompt"])),
             backbone.encode(item["response"]) + [backbone.eos_id]) for item in items]


@torch.no_grad()
def evaluate(backbone, test: list[dict], settings: dict) -> dict:
    """Accuracy by log-likelihood, held-out loss per λ bin, and exact match of the model as it is (adapter or not).

    The Monte-Carlo masks of the likelihood and the masks of the held-out loss are functions of the tokens and fixed
    seeds only, so every method and every seed is scored on the same masks.
    """
    backbone.model.eval()
    # 1. accuracy by log-likelihood over all candidates of every test item
    requests, spans = [], []
    for item in test:
        prompt_ids = backbone.encode(format_prompt(backbone.tokenizer, item["prompt"]))
        spans.append((len(requests), item["candidates"].index(item["gold"]), len(item["candidates"])))
        requests += [(prompt_ids, backbone.encode(candidate)) for candidate in item["candidates"]]
    scores = log_likelihoods(backbone, requests, mc_num=settings["mc_num"], batch_size=64, seed=0)
    correct = [max(range(count), key=lambda k: scores[first + k]) == gold for first, gold, count in spans]
    gold_nats = [-scores[first + gold] for first, gold, _ in spans]

    # 2. held-out masked-diffusion loss at each λ bin, fixed masks (seeded by the chunk and the bin)
    examples = [Example(tuple(p), tuple(r)) for p, r in encoded(backbone, test[: settings["loss_count"]])]
    sums = dict.fromkeys(LEVELS, 0.0)
    for index, start in enumerate(range(0, len(examples), 32)):
        batch = collate(examples[start : start + 32], backbone.eos_id)
        lengths = batch.response_mask.sum(dim=1)  # (B,)
        for level in LEVELS:
            generator = torch.Generator().manual_seed(derived_seed(0, "miniature-held-out", index, level))
            out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, generator=generator,
                                        mask_counts=mask_counts_at(level, lengths))
            sums[level] += out.per_example.double().sum().item()

    # 3. generative exact match (secondary): the default sampler, the canvas one block long
    items = test[: settings["generate"]]
    canvas = max(len(backbone.encode(item["gold"])) for item in test) + 2  # room for the answer and an EOS
    config = SamplerConfig(gen_length=canvas, steps=canvas, block_length=canvas)
    prompts = [backbone.encode(format_prompt(backbone.tokenizer, item["prompt"])) for item in items]
    generated = sample(backbone, prompts, config, generator=torch.Generator().manual_seed(0)).tokens
    matches = [backbone.decode(ids).strip() == item["gold"].strip() for ids, item in zip(generated, items)]
    return {
        "accuracy": 100.0 * statistics.mean(correct),
        "gold_nats": statistics.mean(gold_nats),
        "loss_by_level": {f"{level:g}": sums[level] / len(examples) for level in LEVELS},
        "exact_match": 100.0 * statistics.mean(matches),
        "test_items": len(test),
        "generated": len(items),
    }


def one_run(arm: Arm, task: str, seed: int, settings: dict, data: dict, workdir: Path) -> dict:
    """Train and score one (arm, task, seed); a finished run in `workdir` is read back, not redone."""
    directory = workdir / task / arm.key / f"seed{seed}"
    record_path = directory / "run.json"
    key = json.dumps({name: settings[name] for name in ("steps", "train_count", "test_count", "loss_count",
                                                          "generate", "mc_num", "sst2_whole_split")}, sort_keys=True)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings_key") == key:  # a run of other settings is redone
            return record
    trained = train_arm(arm, data["file"], seed, settings["steps"][task], directory / "adapter")
    backbone = load_backbone(MODEL, "auto", "cpu", False)
    load_adapter(backbone, directory / "adapter")
    started = time.process_time()
    scores = evaluate(backbone, data["test"], settings)
    record = {**trained, **scores, "seed": seed, "settings_key": key, "eval_cpu_seconds": time.process_time() - started,
              "steps_to_90": design.steps_to_fraction(trained["losses"])}
    atomic_write_bytes(record_path, json.dumps(record).encode())
    return record


# -- summaries -------------------------------------------------------------------------------------------------------
METRICS = (("accuracy", "points", True), ("mean_loss", "nats", False), ("exact_match", "points", True))


def summarize(arm: Arm, runs: list[dict], lora_runs: list[dict], base_parameters: int) -> dict:
    """Means over seeds and paired differences to LoRA of one arm on one task."""
    for run in runs:
        run["mean_loss"] = statistics.mean(run["loss_by_level"].values())
    entry = {"arm": arm.key, "label": arm.label, "method": arm.method, "rank": arm.rank, "options": list(arm.options),
             "lr": runs[0]["lr"], "note": arm.note, "seeds": [run["seed"] for run in runs],
             "trainable_parameters": runs[0]["trainable_parameters"],
             "trainable_share": runs[0]["trainable_parameters"] / base_parameters,
             "storage_bytes": runs[0]["storage_bytes"],
             "steps_to_90": [run["steps_to_90"] for run in runs],
             "final_train_loss": statistics.mean(statistics.mean(run["losses"][-20:]) for run in runs),
             "loss_by_level": {level: statistics.mean(run["loss_by_level"][level] for run in runs)
                               for level in runs[0]["loss_by_level"]},
             "train_cpu_seconds": sum(run["train_cpu_seconds"] for run in runs),
             "eval_cpu_seconds": sum(run["eval_cpu_seconds"] for run in runs)}
    for metric, unit, higher in METRICS:
        values = [run[metric] for run in runs]
        entry[metric] = {"per_seed": values, "mean": statistics.mean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else None}
        if arm.key != LORA.key:
            difference = design.paired_difference(values, [run[metric] for run in lora_runs])
            difference["verdict"] = design.verdict(arm.label, difference, unit, higher)
            entry[metric]["vs_lora"] = difference
    return entry


def power(entries: list[dict], n: int) -> dict:
    """The design's power on one task: the median spread of the paired accuracy differences, and what it detects."""
    # a zero spread (every seed the same difference, as coarse test sets give) says nothing about the noise
    spreads = [entry["accuracy"]["vs_lora"]["std"] for entry in entries if "vs_lora" in entry["accuracy"]
               and (entry["accuracy"]["vs_lora"]["std"] or 0) > 0]
    if not spreads:
        return {"n": n, "median_std": None, "detectable_points": None, "seeds_for_2_points": None}
    spread = statistics.median(spreads)
    return {"n": n, "median_std": spread, "detectable_points": design.detectable_difference(spread, n),
            "seeds_for_2_points": design.seeds_needed(spread, 2.0)}


def against_lora_diffusion_paper(result: dict) -> dict | None:
    """LoRA-Diffusion against full fine-tuning on one task, in the paper's terms (98.6 % of full FT at 0.7 %).

    The ratio of accuracies flatters any method near chance (50 % on SST-2 is already 61 % of an 82 % full
    fine-tuning), so the ratio of the gains over the base model is given beside it.
    """
    arms = {entry["arm"]: entry for entry in result["arms"]}
    if "trajectory" not in arms or "full" not in arms:
        return None
    base = result["base"]["accuracy"]
    ours, full = arms["trajectory"]["accuracy"]["mean"], arms["full"]["accuracy"]["mean"]
    return {"accuracy_ratio": ours / full if full else None,
            "gain_ratio": (ours - base) / (full - base) if full != base else None,
            "trainable_share": arms["trajectory"]["trainable_share"],
            "paper": {"accuracy_ratio": 0.986, "trainable_share": 0.007}}


# -- plots -----------------------------------------------------------------------------------------------------------
def plot_figure1(tasks: dict, path: Path) -> None:
    """NaRA's Figure 1 in miniature: LoRA's (and NaRA's) held-out loss reduction over the base model per λ bin."""
    names = [task for task in tasks if any(e["arm"] == "nara" for e in tasks[task]["arms"])] or list(tasks)
    figure = Figure(figsize=(5.2 * len(names), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, task in zip(axes, names):
        base = tasks[task]["base"]["loss_by_level"]
        levels = list(base)
        shown = [entry for entry in tasks[task]["arms"] if entry["arm"] in ("lora", "nara", "nara-default")]
        width = 0.8 / len(shown)
        for offset, entry in enumerate(shown):
            reduction = [base[level] - entry["loss_by_level"][level] for level in levels]
            x = [position + (offset - (len(shown) - 1) / 2) * width for position in range(len(levels))]
            axis.bar(x, reduction, width=width, label=entry["label"])
        axis.set_xticks(range(len(levels)), [f"λ = {level}" for level in levels])
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set(title=f"{task}: held-out loss reduction over the base", ylabel="base loss − adapted loss, nats")
        axis.legend(fontsize="small")
    _save(figure, path)


def plot_loss_curves(tasks: dict, path: Path) -> None:
    """Held-out loss per λ bin of every arm (mean over seeds) against the base model's, one panel per task."""
    figure = Figure(figsize=(5.2 * len(tasks), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for axis, (task, result) in zip(axes, tasks.items()):
        levels = list(result["base"]["loss_by_level"])
        x = [float(level) for level in levels]
        axis.plot(x, [result["base"]["loss_by_level"][level] for level in levels], "k--", label="base model")
        for entry in result["arms"]:
            axis.plot(x, [entry["loss_by_level"][level] for level in levels], marker="o", markersize=3,
                      label=entry["label"])
        axis.set(title=f"{task}: held-out loss, fixed masks", xlabel="noise level λ", ylabel="nats per masked token")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize="x-small")
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


# -- the whole benchmark ---------------------------------------------------------------------------------------------
def run(settings: dict, comparisons: dict, data_dir: Path, workdir: Path, on_line=print) -> dict:
    """Every comparison of `comparisons` under `settings`; returns the JSON record (without timing fields)."""
    base_backbone = load_backbone(MODEL, "auto", "cpu", False)
    base_parameters = sum(parameter.numel() for parameter in base_backbone.model.parameters())
    tasks: dict[str, dict] = {}
    for name, comparison in comparisons.items():
        for task in comparison["tasks"]:
            whole = task == "sst2" and settings["sst2_whole_split"]  # SST-2's 872 validation sentences
            test_count = None if whole else settings["test_count"]
            data = load_task(task, data_dir, settings["train_count"], test_count)
            data["file"] = workdir / task / "train.jsonl"
            data["file"].parent.mkdir(parents=True, exist_ok=True)
            data["file"].write_text("".join(json.dumps(record) + "\n" for record in data["train"]))
            started = time.process_time()
            base = evaluate(base_backbone, data["test"], settings)
            base["mean_loss"] = statistics.mean(base["loss_by_level"].values())
            base["eval_cpu_seconds"] = time.process_time() - started
            on_line(f"{task}: base accuracy {base['accuracy']:.1f} %, loss {base['mean_loss']:.3f}, "
                    f"exact match {base['exact_match']:.1f} % ({len(data['test'])} test items)")
            runs = {arm.key: [one_run(arm, task, seed, settings, data, workdir) for seed in settings["seeds"]]
                    for arm in comparison["arms"][:1]}  # LoRA first: every other arm is compared with it
            entries = [summarize(LORA, runs[LORA.key], runs[LORA.key], base_parameters)]
            for arm in comparison["arms"][1:]:
                runs[arm.key] = [one_run(arm, task, seed, settings, data, workdir) for seed in settings["seeds"]]
                entries.append(summarize(arm, runs[arm.key], runs[LORA.key], base_parameters))
            for entry in entries:
                difference = entry["accuracy"].get("vs_lora")
                on_line(f"  {entry['label']:>42}: accuracy {entry['accuracy']['mean']:.1f} %"
                        + (f" ({difference['verdict']})" if difference else ""))
            tasks[task] = {"comparison": name, "train_examples": len(data["train"]), "test_items": len(data["test"]),
                           "steps": settings["steps"][task], "base": base, "arms": entries,
                           "power": power(entries, len(settings["seeds"]))}
            tasks[task]["against_paper"] = against_lora_diffusion_paper(tasks[task])
    return {"model": MODEL, "base_parameters": base_parameters, "rank": RANK,
            "comparisons": {name: {"title": c["title"], "tasks": list(c["tasks"]), "arms": [a.key for a in c["arms"]]}
                            for name, c in comparisons.items()},
            "settings": {**settings, "seeds": list(settings["seeds"]), "levels": list(LEVELS),
                         "paper_hypernetwork": PAPER_HYPERNETWORK}, "tasks": tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 20 steps, small test sets (2–3 min)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write (plots go next to it)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with sst2/ and agnews/ TSV files")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the runs here; finished runs found in it are read back (default: a temporary dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    started, cpu_started, load_started = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="miniature-"))
    record = run(MODES[mode], COMPARISONS, args.data_dir, workdir, on_line=lambda line: print(line, flush=True))
    folder = args.output.parent
    folder.mkdir(parents=True, exist_ok=True)
    plot_figure1(record["tasks"], folder / FIGURE_PLOT)
    plot_loss_curves(record["tasks"], folder / LOSS_PLOT)
    record = {"command": "python benchmarks/miniature/run.py" + (" --quick" if args.quick else ""), "mode": mode,
              "wall_seconds": round(time.perf_counter() - started, 1),
              "cpu_seconds": round(time.process_time() - cpu_started, 1),  # one torch thread: the cost on an idle core
              "load_average": {"start": load_started, "end": os.getloadavg()[0], "cpus": os.cpu_count()},
              **record, "plots": [FIGURE_PLOT, LOSS_PLOT]}
    atomic_write_bytes(args.output, (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {args.output}, {FIGURE_PLOT} and {LOSS_PLOT} in {record['wall_seconds']:.0f} s "
          f"({record['cpu_seconds']:.0f} CPU s)")


if __name__ == "__main__":
    main()
