"""Sweep of `--hypernetwork-lr` on the default task: the README's first run with only that flag changed.

    python benchmarks/nara_lambda/hypernetwork_lr.py [--values 3e-5,3e-4,3e-3] [--seeds 3] [--jobs 2]

Each value is `benchmarks/default_model/task_gain.py --train-args "--hypernetwork-lr V"` (train NaRA on
`builtin:lastdigit` with every other default, then `dllm-peft eval --adapter out`; exact match on 256 test prompts,
seeds 0..n-1, the same seeds for every value, so the comparison is paired). The value equal to `--lr` (3e-3) is the
default, "the same rate for all" of the NaRA authors. Writes `benchmarks/results/hypernetwork_lr.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "hypernetwork_lr.json"
TASK_GAIN = ROOT / "benchmarks" / "default_model" / "task_gain.py"


def one_value(value: str, seeds: int, jobs: int, workdir: Path) -> dict:
    output = workdir / f"task_gain-{value}.json"
    command = [sys.executable, str(TASK_GAIN), "--seeds", str(seeds), "--jobs", str(jobs), "--workdir",
               str(workdir / value), "--output", str(output), "--train-args", f"--hypernetwork-lr {value}"]
    subprocess.run(command, check=True)
    result = json.loads(output.read_text())["default_task"]
    per_seed = [run["adapted"] for run in result["runs"]]
    return {"hypernetwork_lr": float(value), "adapted_per_seed": per_seed,
            "mean": statistics.mean(per_seed), "stdev": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", default="3e-5,3e-4,3e-3", help="comma-separated learning rates")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        rows = [one_value(value, args.seeds, args.jobs, Path(scratch)) for value in args.values.split(",")]
    default = next((row for row in rows if row["hypernetwork_lr"] == 3e-3), None)
    for row in rows:  # paired by seed against the default rate
        if default is not None:
            differences = [a - b for a, b in zip(row["adapted_per_seed"], default["adapted_per_seed"])]
            row["paired_difference_to_default"] = {"mean": statistics.mean(differences), "per_seed": differences}
    record = {"benchmark": "hypernetwork_lr", "command": " ".join(["python", *sys.argv]), "seeds": args.seeds,
              "task": "builtin:lastdigit, exact match on 256 test prompts", "rows": rows,
              "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_bytes(args.output, (json.dumps(record, indent=2) + "\n").encode())
    for row in rows:
        print(f"--hypernetwork-lr {row['hypernetwork_lr']:g}: {100 * row['mean']:.1f} ± {100 * row['stdev']:.1f} % "
              f"{[round(100 * value, 1) for value in row['adapted_per_seed']]}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
