"""Shared rich consoles: results to stdout, progress and errors to stderr.

In a terminal, rich wraps lines to the window. Piped into a log file (a cluster job), every message is one line,
never hard-wrapped, so that `grep` finds it whole: the console then neither wraps nor crops, whatever its width.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

# wide enough that a table piped to a file keeps each row on one line; a terminal uses its own width
LOG_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    if terminal:
        return Console(stderr=stderr)
    # no stream object is kept: rich writes to whatever sys.stdout / sys.stderr is at print time
    return Console(stderr=stderr, soft_wrap=True, width=LOG_WIDTH)


out = _console(stderr=False)
err = _console(stderr=True)


def print_error(message: str) -> None:
    sentence = message if message.endswith((".", "?", "!")) else message + "."
    err.print(f"[bold red]error:[/] {escape(sentence)}", highlight=False, soft_wrap=True)
