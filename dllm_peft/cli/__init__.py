"""The `dllm-peft` command line: a thin Typer app over the core.

Each subcommand lives in its own module (`*_command.py`) and is one function: flags → config → one core call →
rich output. Expected mistakes (`DllmPeftError`) become one red sentence and exit status 2, never a traceback.
The only layer that prints; it may import every other layer.
"""

from __future__ import annotations

import sys

from ..errors import DllmPeftError

# each module registers its subcommand on `app` when imported
from . import (  # noqa: F401
    eval_command,
    export_command,
    inspect_command,
    merge_command,
    sample_command,
    train_command,
)
from .app import app
from .console import print_error


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="dllm-peft")
    except DllmPeftError as error:
        print_error(str(error))
        sys.exit(2)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
