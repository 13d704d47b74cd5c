"""A results file that keeps one record per model: `{command, mode, wall_seconds, runs: {model: record}}`.

Used by the benchmarks that can be rerun on other models (`method_zoo`, `trajectory_router`): a run on one model
replaces that model's record and keeps the others; the top-level `command`, `mode` and `wall_seconds` are the
latest run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from dllm_peft.atomic import atomic_write_bytes


def write_run(path: Path, model: str, record: dict) -> None:
    """Store `record` (which holds `command`, `mode`, `wall_seconds`) under `model` in the JSON file at `path`."""
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs[model] = record
    latest = {key: record[key] for key in ("command", "mode", "wall_seconds")}
    atomic_write_bytes(path, (json.dumps({**latest, "runs": runs}, indent=2) + "\n").encode())
