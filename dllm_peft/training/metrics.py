"""Training metrics on disk: `metrics.jsonl` in the run directory, and TensorBoard event files when it is installed.

Each line of `metrics.jsonl` is one JSON object with a `kind`: `train` (one per optimizer step: loss, lr, grad
norm, tokens/s, examples read, epoch) or `validation` (held-out loss at random noise levels and at each fixed λ).
Lines are flushed as they are written, so the file can be followed while a run goes on (`tail -f`). When a run is
resumed, lines after the checkpoint's step are dropped first, so the file always tells one consistent history.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends metrics to `<output>/metrics.jsonl` (and TensorBoard, if importable). Use as a context manager."""

    def __init__(self, output: str | Path, resume_step: int | None = None):
        self.path = Path(output) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _truncate_after(self.path, resume_step)
        self._stream = self.path.open("a", encoding="utf-8")
        self._board = _tensorboard_writer(Path(output) / TENSORBOARD_DIR, resume_step)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record; nested dicts (the loss per noise level) become `name/key` scalars in TensorBoard."""
        self._stream.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self._stream.flush()
        if self._board is not None:
            for name, value in _scalars(values):
                self._board.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        self._stream.close()
        if self._board is not None:
            self._board.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(output: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl`, optionally only those of one kind."""
    path = Path(output) / METRICS_FILE
    records = [json.loads(line) for line in _complete_lines(path)]
    return [record for record in records if kind is None or record["kind"] == kind]


def _complete_lines(path: Path) -> list[str]:
    """Lines that parse: a run killed mid-write may leave half a line at the end."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        lines.append(line)
    return lines


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in _complete_lines(path) if json.loads(line)["step"] <= step]
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def _scalars(values: dict[str, Any], prefix: str = ""):
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield prefix + name, value


def _tensorboard_writer(directory: Path, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics.jsonl has everything
        return None
    # purge_step drops events a killed run wrote after its checkpoint, as `_truncate_after` does for the JSONL
    return SummaryWriter(str(directory), purge_step=None if resume_step is None else resume_step + 1)
