"""Kill benchmark: SIGKILL a training run at 10 random moments, resume each, compare with an uninterrupted run.

Each of the 10 trials starts the same short run (`tiny-llada`, NaRA with dropout, validation and checkpoints on, the
last step a checkpoint step), kills it with SIGKILL at one moment, then finishes it with `dllm-peft train --output
DIR --resume` (or, when the kill came before the run recorded its settings, with the same command again), and compares
the final adapter (every tensor, `torch.equal`) and the loss history in metrics.jsonl with the uninterrupted run's.
The moments, drawn with a fixed seed: random times in start-up and in training, inside a checkpoint write (a `.step-N.*.partial`
directory exists), after the last checkpoint and before the final adapter, and inside the final adapter write.
Training runs through `slow_writes.py`, which holds each tensor file at its temporary name for a moment so that a
kill can land inside a write; it changes timing only.

    python benchmarks/kill_resume/run.py            # ≈ 3 min on 2 busy cores
    python benchmarks/kill_resume/run.py --quick    # 3 trials: a checkpoint write, after the last one, the final write

Writes benchmarks/results/kill_resume.json (or --output) and exits non-zero unless every trial matches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dllm_peft.adapters.files import read_adapter
from dllm_peft.atomic import atomic_write_bytes
from dllm_peft.training.checkpoint import RUN_FILE
from dllm_peft.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "kill_resume.json"
WRAPPER = Path(__file__).with_name("slow_writes.py")
STEPS, SAVE_EVERY = 12, 3
TRAIN = [
    *("train", "--model", "tiny-llada", "--data", "builtin:uppercase", "--method", "nara", "--rank", "4"),
    *("--batch-size", "4", "--max-steps", str(STEPS), "--lr", "0.01", "--dropout", "0.1"),
    *("--val-size", "4", "--eval-every", "6", "--save-every", str(SAVE_EVERY), "--keep-checkpoints", "2"),
]
# what a trial waits for before it kills; the kinds every run of the benchmark covers
MOMENTS = ["time", "time", "time", "time", "checkpoint-write", "checkpoint-write", "checkpoint-write",
           "after-last-checkpoint", "final-write", "time-start-up"]
QUICK_MOMENTS = ["checkpoint-write", "after-last-checkpoint", "final-write"]


def command(*extra: str) -> list[str]:
    return [sys.executable, str(WRAPPER), *TRAIN, *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_to_end(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:6])}… failed ({done.returncode}): {done.stderr[-400:]}")
    return time.perf_counter() - started


def timed_reference(output: Path) -> tuple[float, float]:
    """Run the uninterrupted reference. Returns (seconds of start-up: until the run records its settings, seconds of
    training: from then to the end), the spans the random kill times are drawn from."""
    started = time.perf_counter()
    process = subprocess.Popen(command("--output", str(output)), env=environment(), stderr=subprocess.PIPE, text=True)
    recorded = None
    while process.poll() is None:
        if recorded is None and (output / RUN_FILE).exists():
            recorded = time.perf_counter()
        time.sleep(0.002)
    if process.returncode != 0:
        raise RuntimeError(f"the reference run failed: {process.stderr.read()[-400:]}")
    ended = time.perf_counter()
    return (recorded or ended) - started, ended - (recorded or ended)


def reached(moment: str, output: Path, target: dict) -> bool:
    """Whether the run in `output` is at the moment this trial kills at."""
    checkpoints = output / "checkpoints"
    if moment == "time":  # a random time into the training phase (after start-up)
        if "at" not in target and (output / RUN_FILE).exists():
            target["at"] = time.perf_counter() + target["after_start_up_s"]
        return "at" in target and time.perf_counter() >= target["at"]
    if moment == "time-start-up":
        return time.perf_counter() >= target["at"]
    if moment == "checkpoint-write":
        partial = list(checkpoints.glob(f".step-{target['step']}.*.partial")) if checkpoints.is_dir() else []
        return any(any(path.iterdir()) for path in partial if path.is_dir())
    if moment == "after-last-checkpoint":
        return (checkpoints / f"step-{STEPS}").is_dir() and not (output / "dllm_peft_adapter.safetensors").exists()
    if moment == "final-write":
        return bool(list(output.glob(".dllm_peft_adapter.safetensors.*.tmp")))
    raise ValueError(moment)


def trial(moment: str, output: Path, rng: random.Random, spans: tuple[float, float]) -> dict:
    start_up, training = spans
    target = {}
    started = time.perf_counter()
    if moment == "time":
        target["after_start_up_s"] = round(rng.uniform(0.0, 1.0) * training, 3)
    elif moment == "time-start-up":
        target["after_launch_s"] = round(rng.uniform(0.1, 0.9) * start_up, 3)
        target["at"] = started + target["after_launch_s"]
    elif moment == "checkpoint-write":
        target["step"] = rng.choice(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    process = subprocess.Popen(command("--output", str(output)), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    while process.poll() is None:
        if reached(moment, output, target):
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    process.wait()
    killed_after = time.perf_counter() - started
    state = {
        "checkpoints": sorted(path.name for path in (output / "checkpoints").glob("*")) if output.is_dir() else [],
        "adapter_written": (output / "dllm_peft_adapter.safetensors").exists(),
        "leftovers": sorted(path.name for path in output.rglob(".*") if path.is_file() or path.is_dir())
        if output.is_dir() else [],
    }
    resumed = (output / RUN_FILE).exists()
    resume = [sys.executable, str(WRAPPER), "train", "--output", str(output), "--resume"]
    run_to_end(resume if resumed else command("--output", str(output)))
    return {
        "moment": moment,
        **{key: value for key, value in target.items() if key != "at"},
        "killed": killed,
        "killed_after_s": round(killed_after, 2),
        "at_kill": state,
        "finished_with": "--resume" if resumed else "the same command (no run recorded yet)",
        "leftovers_after": sorted(path.name for path in output.rglob(".*")),
    }


def compare(output: Path, reference: Path) -> dict:
    _, tensors = read_adapter(output)
    _, expected = read_adapter(reference)
    equal = [name for name in expected if name in tensors and torch.equal(tensors[name], expected[name])]
    losses = [r["loss"] for r in read_metrics(output, "train")] == [r["loss"] for r in read_metrics(reference, "train")]
    validation = read_metrics(output, "validation") == read_metrics(reference, "validation")
    return {"tensors_equal": len(equal), "tensors": len(expected), "same_names": set(tensors) == set(expected),
            "losses_equal": losses, "validation_equal": validation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 trials instead of 10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    moments = QUICK_MOMENTS if args.quick else MOMENTS
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "reference"
        spans = timed_reference(reference)
        trials = []
        for index, moment in enumerate(moments):
            output = Path(scratch) / f"trial-{index}"
            result = trial(moment, output, rng, spans)
            result |= compare(output, reference)
            result["identical"] = (result["same_names"] and result["tensors_equal"] == result["tensors"]
                                   and result["losses_equal"] and result["validation_equal"]
                                   and not result["leftovers_after"])
            trials.append(result)
            print(f"{index + 1:2d}/{len(moments)} {moment:22s} killed={result['killed']!s:5s} "
                  f"at kill: {result['at_kill']['checkpoints']} -> identical={result['identical']}", flush=True)
    identical = sum(trial["identical"] for trial in trials)
    summary = {
        "benchmark": "kill_resume",
        "command": " ".join(["dllm-peft", *TRAIN]),
        "reference_start_up_s": round(spans[0], 2),
        "reference_training_s": round(spans[1], 2),
        "identical": identical,
        "trials": len(trials),
        "seconds": round(time.perf_counter() - started, 1),
        "results": trials,
    }
    atomic_write_bytes(args.output, (json.dumps(summary, indent=2) + "\n").encode())
    print(f"{identical}/{len(trials)} resumed runs equal the uninterrupted run bit for bit; wrote {args.output}")
    sys.exit(0 if identical == len(trials) else 1)


if __name__ == "__main__":
    main()
