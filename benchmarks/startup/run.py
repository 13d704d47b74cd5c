"""Start-up time of `dllm-peft --help` and `dllm-peft train --help` against `python -c pass`, measured in one run.

Each command runs 5 times as a fresh process (interleaved, so a change in the machine's load hits all of them
alike); the median wall time is reported, with the ratio to the bare interpreter. The goal is ≤ 1.5 s for
`dllm-peft --help` (issue 19): help must not import torch, transformers or lm-eval.

    python benchmarks/startup/run.py            # writes benchmarks/results/startup.json (≈ 10 s)
    python benchmarks/startup/run.py --quick    # the same (it is already short)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "startup.json"
REPEATS = 5
GOAL_SECONDS = 1.5
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "dllm-peft --help": [sys.executable, "-m", "dllm_peft", "--help"],
    "dllm-peft train --help": [sys.executable, "-m", "dllm_peft", "train", "--help"],
}


def wall_seconds(command: list[str]) -> float:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=environment, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for run_all.py; the run is the same")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, command in COMMANDS.items():  # one warm-up each: the first start reads the files from disk
        wall_seconds(command)
    for _ in range(REPEATS):
        for name, command in COMMANDS.items():
            times[name].append(wall_seconds(command))
    baseline = statistics.median(times["python -c pass"])
    rows = {
        name: {
            "median_seconds": round(statistics.median(values), 3),
            "runs_seconds": [round(value, 3) for value in values],
            "ratio_to_python": round(statistics.median(values) / baseline, 2),
        }
        for name, values in times.items()
    }
    help_median = rows["dllm-peft --help"]["median_seconds"]
    results = {
        "command": " ".join(["python", *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "repeats": REPEATS,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "goal_seconds": GOAL_SECONDS,
        "meets_goal": help_median <= GOAL_SECONDS,
        "commands": rows,
    }
    atomic_write_bytes(args.output, (json.dumps(results, indent=2) + "\n").encode())
    for name, row in rows.items():
        print(f"{name:26s} median {row['median_seconds']:.3f} s  ({row['ratio_to_python']:.1f}× python -c pass)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
