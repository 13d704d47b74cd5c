"""Method-zoo benchmark: `python benchmarks/method_zoo/run.py [--quick]` → `benchmarks/results/method_zoo.json`.

For every registered method: `train()` (what `dllm-peft train --method M --max-steps 20` runs) on the default model
and data, then the validation loss before and after (the loop validates at step 0 and at the end; the mean over the
fixed noise levels λ ∈ {0.1, 0.3, 0.5, 0.7, 0.9} has no sampling noise, so a drop is a real drop), the trainable count
`train` reports and the one `dllm-peft inspect ADAPTER --model M` prints, and the wall time. One torch thread: the
machine is shared, and two threads on two busy cores are many times slower than one. `--quick` trains 4 steps instead
of 20 (every method still runs; the losses say less).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # runs_file.py

from runs_file import write_run  # noqa: E402  (benchmarks/runs_file.py)

from dllm_peft.adapters.registry import METHODS  # noqa: E402
from dllm_peft.adapters.summary import adapter_in_backbone  # noqa: E402
from dllm_peft.config import DEFAULT_MODEL, TrainConfig  # noqa: E402
from dllm_peft.models import load_backbone  # noqa: E402  (first: the models package imports io)
from dllm_peft.training.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "method_zoo.json"
STEPS = {"full": 20, "quick": 4}


def fixed_level_mean(report) -> float:
    return sum(report.by_noise_level.values()) / len(report.by_noise_level)


def run_method(method: str, model: str, steps: int, lr: float, directory: Path) -> dict:
    output = directory / method
    started = time.perf_counter()
    result = train(TrainConfig(method=method, model=model, max_steps=steps, lr=lr, output=str(output), seed=0))
    seconds = time.perf_counter() - started
    first, last = result.validation[0], result.validation[-1]
    inspected = adapter_in_backbone(load_backbone(model, dtype="float32", device="cpu"), output)
    before, after = fixed_level_mean(first), fixed_level_mean(last)
    return {
        "validation_loss_before": before,
        "validation_loss_after": after,
        "validation_loss_drops": after < before,
        "loss_by_noise_level_before": {f"{k:g}": v for k, v in first.by_noise_level.items()},
        "loss_by_noise_level_after": {f"{k:g}": v for k, v in last.by_noise_level.items()},
        "train_loss_first_step": result.losses[0],
        "train_loss_last_5_mean": sum(result.losses[-5:]) / len(result.losses[-5:]),
        "trainable_parameters_train": result.trainable_parameters,
        "trainable_parameters_inspect": inspected.trainable_parameters,
        "counts_agree": result.trainable_parameters == inspected.trainable_parameters,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, help=f"default: {STEPS['full']} ({STEPS['quick']} with --quick)")
    parser.add_argument("--lr", type=float, default=TrainConfig().lr)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help=f"{STEPS['quick']} training steps per method")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write (runs of other models kept)")
    args = parser.parse_args()
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    args.steps = args.steps or STEPS[mode]
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            results[method] = run_method(method, args.model, args.steps, args.lr, Path(scratch))
            row = results[method]
            print(
                f"{method:18s} val {row['validation_loss_before']:.4f} → {row['validation_loss_after']:.4f}  "
                f"trainable {row['trainable_parameters_train']:>9,} (inspect {row['trainable_parameters_inspect']:,})  "
                f"{row['seconds']:.1f}s"
            )
    record = {
        "command": " ".join(["python", "benchmarks/method_zoo/run.py", *sys.argv[1:]]),
        "mode": mode,
        "model": args.model,
        "data": TrainConfig().data,
        "steps": args.steps,
        "lr": args.lr,
        "settings": "TrainConfig defaults otherwise (rank 32, batch 8, seed 0); each method's own defaults",
        "machine": platform.platform(),
        "torch": torch.__version__,
        "all_losses_drop": all(row["validation_loss_drops"] for row in results.values()),
        "all_counts_agree": all(row["counts_agree"] for row in results.values()),
        "methods": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_run(args.output, args.model, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
