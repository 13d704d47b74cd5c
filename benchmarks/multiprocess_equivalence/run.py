"""Check: `accelerate launch` with 2 processes × grad-accum g trains what 1 process × grad-accum 2g trains.

Both runs are the real `dllm-peft train` on the built-in tiny LLaDA and task (NaRA, dropout on, validation on). The
2-process run goes through `accelerate launch --multi_gpu --num_processes 2`, which on a machine without GPUs starts
two CPU processes joined by gloo (accelerate's MULTI_CPU mode). Only the order of floating-point sums differs between
the runs. The per-step training losses and the validation losses at every fixed λ must agree within LOSS_TOLERANCE
(relative); the final adapter tensors within ADAPTER_TOLERANCE of each tensor's largest entry, a looser bound because
AdamW divides by √v: rounding in near-zero gradient entries becomes a visible update, more so with every step.

    python benchmarks/multiprocess_equivalence/run.py           # ≈ 1 min on 2 idle cores
    python benchmarks/multiprocess_equivalence/run.py --quick   # 6 steps instead of 20

Writes benchmarks/results/multiprocess_equivalence.json (or --output) and exits non-zero if the check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dllm_peft.adapters.files import read_adapter
from dllm_peft.atomic import atomic_write_bytes
from dllm_peft.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "multiprocess_equivalence.json"
LOSS_TOLERANCE = 1e-5
ADAPTER_TOLERANCE = 1e-4
ACCUM = 2
STEPS = {"full": 20, "quick": 6}


def train_arguments(steps: int) -> list[str]:
    """The `dllm-peft train` arguments both runs share; validation twice (halfway and at the end)."""
    return [
        *("train", "--model", "tiny-llada", "--data", "builtin:uppercase", "--method", "nara", "--rank", "8"),
        *("--batch-size", "2", "--max-steps", str(steps), "--lr", "0.005"),
        *("--dropout", "0.1", "--val-size", "16", "--eval-every", str(steps // 2), "--save-every", "0"),
    ]

LAUNCH = [
    *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
    *("--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dllm_peft"),
]


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{STEPS['quick']} steps instead of {STEPS['full']}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args()
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    arguments = train_arguments(STEPS[mode])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        one, two = Path(scratch) / "one", Path(scratch) / "two"
        for command in (
            [sys.executable, "-m", "dllm_peft", *arguments, "--grad-accum", str(2 * ACCUM), "--output", str(one)],
            [*LAUNCH, *arguments, "--grad-accum", str(ACCUM), "--output", str(two)],
        ):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command[:6])} … failed:\n{done.stderr[-2000:]}")
        losses = [(a["loss"], b["loss"]) for a, b in zip(read_metrics(two, "train"), read_metrics(one, "train"))]
        levels = [
            (a["loss_by_noise_level"][level], b["loss_by_noise_level"][level])
            for a, b in zip(read_metrics(two, "validation"), read_metrics(one, "validation"))
            for level in b["loss_by_noise_level"]
        ]
        (_, adapter_two), (_, adapter_one) = read_adapter(two), read_adapter(one)
    # Per tensor, relative to its own scale: entries near zero (B starts at zero) make element-wise ratios meaningless.
    weight_gap = max(
        float((adapter_two[name] - adapter_one[name]).abs().max() / adapter_one[name].abs().max().clamp(min=1e-12))
        for name in adapter_one
    )
    result = {
        "command": " ".join(["python", "benchmarks/multiprocess_equivalence/run.py", *sys.argv[1:]]),
        "mode": mode,
        "setup": {
            "steps": STEPS[mode],
            "one_process_grad_accum": 2 * ACCUM,
            "two_processes_grad_accum": ACCUM,
            "command": " ".join(LAUNCH + arguments),
            "torch": torch.__version__,
        },
        "train_loss_max_relative_difference": max(relative_difference(a, b) for a, b in losses),
        "validation_loss_max_relative_difference": max(relative_difference(a, b) for a, b in levels),
        "adapter_max_relative_difference": weight_gap,
        "loss_tolerance": LOSS_TOLERANCE,
        "adapter_tolerance": ADAPTER_TOLERANCE,
        "losses_two_processes": [a for a, _ in losses],
        "losses_one_process": [b for _, b in losses],
    }
    result["passed"] = (
        max(result["train_loss_max_relative_difference"], result["validation_loss_max_relative_difference"])
        <= LOSS_TOLERANCE
        and result["adapter_max_relative_difference"] <= ADAPTER_TOLERANCE
    )
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_bytes(args.output, (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("losses")}, indent=2))
    if not result["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
