"""Progress of evaluation requests with done/total and time remaining, for runs that no rich console watches.

`PlainProgress` is what `lm_eval --model dllm-peft` shows (the `dllm-peft eval` command draws its own rich bars):
on a terminal a tqdm bar per request type on stderr, as lm-eval's `hf` model draws; elsewhere (a cluster log) one
plain line whenever another `EVERY_FRACTION` of the requests is done or `EVERY_SECONDS` have passed, so a log shows
that the run is alive and when it should end. The remaining time is the elapsed time scaled by what is left.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

EVERY_FRACTION = 0.05  # a plain line per 5 % of the work ...
EVERY_SECONDS = 60.0  # ... or per minute, whichever comes first


def remaining_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Time left at the rate so far; None before anything is done."""
    if done <= 0 or total <= 0:
        return None
    return elapsed * max(total - done, 0) / done


def clock(seconds: float | None) -> str:
    """`1:02:03`, `4:05`, or `?` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """A `(kind, done, total)` callback: tqdm bars on a terminal, else throttled plain lines, both on `stream`."""

    def __init__(self, stream: TextIO | None = None, prefix: str = "dllm-peft") -> None:
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bars: dict[str, object] = {}
        self._started: dict[str, float] = {}
        self._last: dict[str, tuple[float, float]] = {}  # kind → (time, fraction) of the last plain line

    def __call__(self, kind: str, done: int, total: int) -> None:
        now = time.monotonic()
        started = self._started.setdefault(kind, now)
        if self.terminal:
            self._bar(kind, done, total)
            return
        fraction = done / total if total else 1.0
        last_time, last_fraction = self._last.get(kind, (started, 0.0))
        finished = done >= total
        if finished or fraction - last_fraction >= EVERY_FRACTION or now - last_time >= EVERY_SECONDS:
            self._last[kind] = (now, fraction)
            left = remaining_seconds(now - started, done, total)
            print(f"{self.prefix} {kind}: {done}/{total} ({100 * fraction:.0f} %), elapsed {clock(now - started)}, "
                  f"remaining {clock(left)}", file=self.stream, flush=True)

    def _bar(self, kind: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(kind)
        if bar is None:
            bar = self._bars[kind] = tqdm(total=total, desc=f"{self.prefix} {kind}", file=self.stream)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[kind]
