"""The first-run experience, measured with the real CLI: `python benchmarks/default_model/task_gain.py`.

For each seed: `dllm-peft train --method nara` (seed 0 with no other flag at all, in a fresh directory; seeds 1 and 2
add only `--seed`), timed from process start to exit (model load included), then
`dllm-peft eval --adapter out --output eval.json`, which scores the base model and the adapted one on the default
task's test split in the same run. The figures (wall times, base and adapted exact match, their mean and spread over
the seeds) are merged into `benchmarks/results/default_model.json` (or `--output`) under "default_task".
`--quick`: seed 0 only, trained for 100 steps (`--max-steps 100`, instead of the default 600) and scored on the first
64 test prompts (`dllm-peft eval --limit 64`) instead of all 256: a smoke run of the same two commands.
`--train-args "..."`: extra `train` flags (e.g. another design of the noise level, `benchmarks/nara_lambda/compare.py`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
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
QUICK_STEPS, QUICK_EVAL_LIMIT = 100, 64


def run(command: list[str], cwd: Path, log: Path) -> float:
    """Run `command` in `cwd`, output to `log`; returns its wall time in seconds (raises if it fails)."""
    started = time.perf_counter()
    # the README's commands as typed (`dllm-peft ...`), run by this interpreter so no activated venv is needed
    launch = [sys.executable, "-m", "dllm_peft", *command[1:]] if command[0] == "dllm-peft" else command
    with log.open("w") as stream:
        subprocess.run(launch, cwd=cwd, stdout=stream, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "COLUMNS": "120"})
    return time.perf_counter() - started


def one_seed(seed: int, workdir: Path, quick: bool, extra: list[str]) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    train = ["dllm-peft", "train", "--method", "nara"] + ([] if seed == 0 else ["--seed", str(seed)]) + extra
    train += ["--max-steps", str(QUICK_STEPS)] if quick else []
    train_seconds = run(train, workdir, workdir / "train.log")
    evaluate = ["dllm-peft", "eval", "--adapter", "out", "--output", "eval.json"]
    evaluate += ["--limit", str(QUICK_EVAL_LIMIT)] if quick else []
    eval_seconds = run(evaluate, workdir, workdir / "eval.log")
    results = json.loads((workdir / "eval.json").read_text())["results"]
    task = next(iter(results["base"]))
    return {
        "seed": seed,
        "train_command": " ".join(train),
        "eval_command": " ".join(evaluate),
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
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 (1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary dir)")
    parser.add_argument("--quick", action="store_true", help=f"seed 0, {QUICK_STEPS} steps, {QUICK_EVAL_LIMIT} test prompts")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to merge `default_task` into")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (wall times then share the CPU)")
    parser.add_argument("--train-args", default="", help="extra flags for `dllm-peft train` (default: none)")
    args = parser.parse_args()
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    seeds = args.seeds or (1 if args.quick else 3)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dllm-tiny-task-"))
    extra = shlex.split(args.train_args)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one_seed, seed, workdir / f"seed{seed}", args.quick, extra) for seed in range(seeds)]
        runs = [future.result() for future in futures]
    for result in runs:
        print(json.dumps(result), flush=True)
    defaults = TrainConfig()
    record = json.loads(args.output.read_text()) if args.output.is_file() else {}
    record["default_task"] = {
        "command": " ".join(["python", "benchmarks/default_model/task_gain.py", *sys.argv[1:]]),
        "mode": mode,
        "defaults": {"model": defaults.model, "data": defaults.data, "method": defaults.method,
                     "max_steps": defaults.max_steps, "lr": defaults.lr, "rank": defaults.rank,
                     "padding": defaults.padding, "noise_draw": defaults.noise_draw},
        "cpu_count": os.cpu_count(),
        "jobs": args.jobs,
        "load_average_at_end": os.getloadavg()[0],  # the machine is shared: wall times depend on it
        "runs": runs,
        "base": summary([r["base"] for r in runs]),
        "adapted": summary([r["adapted"] for r in runs]),
        "train_seconds": summary([r["train_seconds"] for r in runs]),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_bytes(args.output, (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps({k: record["default_task"][k] for k in ("base", "adapted", "train_seconds")}, indent=2))


if __name__ == "__main__":
    main()
