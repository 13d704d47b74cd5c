"""Rerun every benchmark and rebuild the tables: `python benchmarks/run_all.py [--quick] [--only NAME,…]`.

Each benchmark's script runs as a subprocess, in the order of BENCHMARKS, with `--output <results>/<name>.json` (and
`--quick` in quick mode); its own output streams through. The first one that fails stops the run with a message
naming it. `<results>/run_all.json` records, per benchmark, the mode, the wall seconds, the exit status and the
command.

* Full mode writes to `benchmarks/results/` and then rewrites the `<!-- benchmarks:… -->` blocks of README.md and
  benchmarks/README.md (`report.py`).
* Quick mode writes to `benchmarks/results/quick/`, so the committed full results are never replaced by quick
  ones, and renders the tables into `benchmarks/results/quick/tables.md` instead of the READMEs.

Not run: `benchmarks/default_model/build.py` (pretrains the default model from scratch, 41 min here) and
`candidates.py` (35 min); run those by hand. Nor `benchmarks/gpu/run.py` (GPU_ONLY: it needs a CUDA device; its
`--tiny` CPU check runs in the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
ROOT = BENCHMARKS_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCHMARKS_DIR))

import report  # noqa: E402  (benchmarks/report.py, beside this file)

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402

# (name, script): the name is the JSON file's stem and what --only takes. Run in this order.
BENCHMARKS = (
    ("sampler", "sampler/run.py"),
    ("train_throughput", "train_throughput/run.py"),
    ("loglikelihood", "loglikelihood/run.py"),
    ("miniature", "miniature/run.py"),
    ("method_zoo", "method_zoo/run.py"),
    ("trajectory_router", "trajectory_router/run.py"),
    ("multiprocess_equivalence", "multiprocess_equivalence/run.py"),
    ("backbone_loading", "backbone_loading/run.py"),
    ("default_model", "default_model/task_gain.py"),
    ("kill_resume", "kill_resume/run.py"),
    ("startup", "startup/run.py"),
)
GPU_ONLY = ("gpu/run.py",)  # needs a CUDA device: run by hand (benchmarks/gpu/README.md)
FULL_RESULTS = BENCHMARKS_DIR / "results"
QUICK_RESULTS = FULL_RESULTS / "quick"


def selected(only: str | None) -> list[tuple[str, str]]:
    """The benchmarks named in `only` (comma-separated), in run order; all of them without it."""
    if not only:
        return list(BENCHMARKS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = dict(BENCHMARKS)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"run_all: unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}.")
    return [(name, script) for name, script in BENCHMARKS if name in names]


def command_for(script: str, output: Path, quick: bool) -> list[str]:
    return [sys.executable, str(BENCHMARKS_DIR / script), *(["--quick"] if quick else []), "--output", str(output)]


def shown(command: list[str]) -> str:
    """The command as a user would type it from the repository root."""
    words = ["python" if word == sys.executable else word for word in command]
    return " ".join(os.path.relpath(word, ROOT) if word.startswith(str(ROOT)) else word for word in words)


def earlier_entries(path: Path, mode: str, rerun: set[str]) -> list[dict]:
    """Entries of the previous record of the same mode for benchmarks not rerun now (so `--only` keeps the rest)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if previous.get("mode") != mode:
        return []
    return [entry for entry in previous.get("benchmarks", []) if entry.get("name") not in rerun]


def write_record(path: Path, record: dict, kept: list[dict]) -> None:
    """`record` with the kept earlier entries merged in, in run order."""
    order = [name for name, _ in BENCHMARKS]
    entries = sorted(kept + record["benchmarks"], key=lambda entry: order.index(entry["name"]))
    atomic_write_bytes(path, (json.dumps({**record, "benchmarks": entries}, indent=2) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced runs (≤ 10 min in all on 2 cores)")
    parser.add_argument("--only", help="comma-separated names: " + ", ".join(name for name, _ in BENCHMARKS))
    parser.add_argument("--results", type=Path, help="default: benchmarks/results (quick: benchmarks/results/quick)")
    args = parser.parse_args()
    chosen = selected(args.only)
    mode = "quick" if args.quick else "full"
    results = (args.results or (QUICK_RESULTS if args.quick else FULL_RESULTS)).resolve()
    results.mkdir(parents=True, exist_ok=True)
    kept = earlier_entries(results / "run_all.json", mode, {name for name, _ in chosen})
    record = {
        "command": " ".join(["python", "benchmarks/run_all.py", *sys.argv[1:]]),
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu_count": os.cpu_count(),
        "benchmarks": [],
    }
    # Unbuffered: the benchmarks' progress interleaves with ours in order. One OpenMP thread: the benchmarks set one
    # torch thread themselves, and this also holds the CLI processes they start (on a shared 2-core machine two
    # threads are slower than one).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    for position, (name, script) in enumerate(chosen, start=1):
        command = command_for(script, results / f"{name}.json", args.quick)
        print(f"\n=== [{position}/{len(chosen)}] {name} ({mode}): {shown(command)}", flush=True)
        began = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        seconds = time.perf_counter() - began
        record["benchmarks"].append(
            {"name": name, "mode": mode, "seconds": round(seconds, 1), "exit_status": status, "command": shown(command)}
        )
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_record(results / "run_all.json", record, kept)
        print(f"=== {name}: {'done' if status == 0 else f'FAILED (exit {status})'} in {seconds:.0f} s", flush=True)
        if status != 0:
            raise SystemExit(
                f"run_all: benchmark '{name}' failed with exit status {status} after {seconds:.0f} s; "
                f"rerun it alone with: {shown(command)}"
            )
    if args.quick or args.results is not None and results != FULL_RESULTS.resolve():
        tables = results / "tables.md"
        report.write_tables(tables, results)
        print(f"\nrendered the tables into {shown([str(tables)])}")
    else:
        for readme in report.READMES:
            blocks = report.update_file(readme, results)
            print(f"\n{shown([str(readme)])}: rewrote {', '.join(blocks) or 'no blocks (no markers found)'}")
    minutes = (time.perf_counter() - started) / 60
    print(f"run_all ({mode}): {len(chosen)} benchmarks in {minutes:.1f} min; record: {shown([str(results)])}/run_all.json")


if __name__ == "__main__":
    main()
