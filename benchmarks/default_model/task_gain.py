"""The first-run experience, measured with the real CLI: `python benchmarks/default_model/task_gain.py`.

For each seed: `dllm-peft train --method nara` (seed 0 with no other flag at all, in a fresh directory; seeds 1 and 2
add only `--seed`), timed from process start to exit (model load included), then
`dllm-peft eval --adapter out --output eval.json`, which scores the base model and the adapted one on the default
task's test split in the same run. The figures (wall times, base and adapted exact match, their mean and spread over
the seeds) are merged into `benchmarks/results/default_model.json` under "default_task".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.config import TrainConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "default_model.json"


def run(command: list[str], cwd: Path, log: Path) -> float:
    """Run `command` in `cwd`, output to `log`; returns its wall time in seconds (raises if it fails)."""
    started = time.perf_counter()
    with log.open("w") as stream:
        subprocess.run(command, cwd=cwd, stdout=stream, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "COLUMNS": "120"})
    return time.perf_counter() - started


def one_seed(seed: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    train = ["dllm-peft", "train", "--method", "nara"] + ([] if seed == 0 else ["--seed", str(seed)])
    train_seconds = run(train, workdir, workdir / "train.log")
    evaluate = ["dllm-peft", "eval", "--adapter", "out", "--output", "eval.json"]
    eval_seconds = run(evaluate, workdir, workdir / "eval.log")
    results = json.loads((workdir / "eval.json").read_text())["results"]
    task = next(iter(results["base"]))
    return {
        "seed": seed,
        "train_command": " ".join(train),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "task": task,
        "base": results["base"][task]["value"],
        "adapted": results["adapter"][task]["value"],
        "documents": results["base"][task]["documents"],
        "train_log_tail": (workdir / "train.log").read_text().strip().splitlines()[-3:],
    }


def summary(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dllm-tiny-task-"))
    runs = []
    for seed in range(args.seeds):
        runs.append(one_seed(seed, workdir / f"seed{seed}"))
        print(json.dumps(runs[-1]), flush=True)
    defaults = TrainConfig()
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    record["default_task"] = {
        "defaults": {"model": defaults.model, "data": defaults.data, "method": defaults.method,
                     "max_steps": defaults.max_steps, "lr": defaults.lr, "rank": defaults.rank},
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],  # the machine is shared: wall times depend on it
        "runs": runs,
        "base": summary([r["base"] for r in runs]),
        "adapted": summary([r["adapted"] for r in runs]),
        "train_seconds": summary([r["train_seconds"] for r in runs]),
    }
    atomic_write_bytes(RESULTS, (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps({k: record["default_task"][k] for k in ("base", "adapted", "train_seconds")}, indent=2))


if __name__ == "__main__":
    main()
