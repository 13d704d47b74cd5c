"""`dllm-peft eval --sampler-preset fast` against `exact` on the default task: accuracy and eval speed-up.

A default adapter (`dllm-peft train` with its defaults, `--max-steps` from `--train-steps`, seed 0) is trained once on
the default model and task, then scored on the default task's test prompts by `dllm_peft.evaluation.evaluate` — what `dllm-peft eval` runs — once with the exact
sampler (the task's generation length, one step per token) and once with the `fast` preset (threshold 0.9 + dual KV
cache, the Fast-dLLM settings of `benchmarks/sampler`; `--cache-refresh` left at its default, 0 = refresh at block
starts: its stale-λ effect on NaRA is benchmarked separately). The two are interleaved and repeated; an eval's time is
its minimum over the repeats (thread CPU time, so waiting for a core on the shared machine does not count). Both
presets answer the same prompts, so their accuracy difference is paired: it is reported with a 95 % interval from the
documents on which exactly one of them is right (the normal interval of a paired difference of proportions).

    nice python benchmarks/sampler/preset.py      # writes benchmarks/results/sampler_preset.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
import tempfile  # noqa: E402

from dllm_peft.config import DEFAULT_DATA, DEFAULT_MODEL, SAMPLER_PRESETS, EvalConfig, TrainConfig  # noqa: E402
from dllm_peft.evaluation.evaluate import evaluate  # noqa: E402
from dllm_peft.training.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sampler_preset.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=128, help="test prompts of the default task")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=600, help="as benchmarks/sampler's accuracy section")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    task = DEFAULT_DATA.removeprefix("builtin:")
    directory = tempfile.TemporaryDirectory()
    adapter = str(Path(directory.name) / "adapter")
    started = time.perf_counter()
    trained = train(TrainConfig(output=adapter, max_steps=arguments.train_steps, seed=0))
    train_seconds = time.perf_counter() - started
    configs = {preset: EvalConfig(adapter=adapter, compare_base=False, limit=arguments.limit, device="cpu",
                                  sampler_preset=preset, log_samples=True,
                                  output=str(Path(directory.name) / f"{preset}.json")) for preset in SAMPLER_PRESETS}
    correct = {}
    seconds = {preset: [] for preset in configs}
    scores = {}
    for repeat in range(arguments.repeats):
        order = list(configs) if repeat % 2 == 0 else list(configs)[::-1]
        for preset in order:
            started = time.thread_time()
            results = evaluate(configs[preset])
            seconds[preset].append(time.thread_time() - started)
            score = results.runs["adapter"][task]
            correct[preset] = {row["doc_id"]: bool(row["correct"]) for row in results.samples["adapter"][task]}
            scores[preset] = {"exact_match": round(100 * score.value, 2), "stderr": round(100 * (score.stderr or 0), 2),
                              "documents": score.documents}
    for preset, row in scores.items():
        row["eval_seconds"] = round(min(seconds[preset]), 2)
        row["settings"] = SAMPLER_PRESETS[preset]
    report = {
        "benchmark": "dllm-peft eval --sampler-preset fast vs exact on the default task",
        "command": " ".join(["python", "benchmarks/sampler/preset.py", *sys.argv[1:]]),
        "model": DEFAULT_MODEL,
        "adapter": f"dllm-peft train --max-steps {arguments.train_steps} --seed 0 (defaults otherwise; in process)",
        "train_seconds": round(train_seconds, 1),
        "train_loss_last": round(trained.losses[-1], 4),
        "task": task,
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, shared 2-core machine, niced",
        "clock": "thread CPU time of the whole evaluate call; minimum over interleaved repeats",
        "repeats": arguments.repeats,
        "presets": scores,
        "speedup_fast_vs_exact": round(scores["exact"]["eval_seconds"] / scores["fast"]["eval_seconds"], 2),
        "accuracy_difference_points": round(scores["fast"]["exact_match"] - scores["exact"]["exact_match"], 2),
        "paired": paired_difference(correct["exact"], correct["fast"]),
        "all_seconds": {preset: [round(value, 2) for value in values] for preset, values in seconds.items()},
    }
    atomic_write_bytes(arguments.output, (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps({key: report[key] for key in ("speedup_fast_vs_exact", "accuracy_difference_points")}))


def paired_difference(first: dict, second: dict) -> dict:
    """second − first accuracy in points over the shared documents, with its 95 % normal interval (paired)."""
    documents = sorted(set(first) & set(second))
    only_second = sum(second[doc] and not first[doc] for doc in documents)
    only_first = sum(first[doc] and not second[doc] for doc in documents)
    n = len(documents)
    difference = (only_second - only_first) / n
    variance = ((only_second + only_first) / n - difference**2) / n  # of the mean of the per-document differences
    half = 1.96 * variance**0.5
    return {"documents": n, "only_fast_right": only_second, "only_exact_right": only_first,
            "difference_points": round(100 * difference, 2),
            "ci95_points": [round(100 * (difference - half), 2), round(100 * (difference + half), 2)]}


if __name__ == "__main__":
    main()
