"""Shared rich consoles: results to stdout, progress and errors to stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)


def print_error(message: str) -> None:
    sentence = message if message.endswith((".", "?", "!")) else message + "."
    err.print(f"[bold red]error:[/] {escape(sentence)}", highlight=False, soft_wrap=True)
