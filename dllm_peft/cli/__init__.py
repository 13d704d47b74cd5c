"""The `dllm-peft` command line: a thin Typer app over the core.

Each subcommand lives in its own module (`*_command.py`) and is one function: flags → config → one core call →
rich output. Expected mistakes (`DllmPeftError`) become one red sentence and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from ..errors import DllmPeftError
from .console import print_error

app = typer.Typer(
    name="dllm-peft",
    help="Fine-tune and evaluate diffusion LLMs with parameter-efficient adapters (NaRA, LoRA, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import eval_command, export_command, inspect_command, merge_command, sample_command, train_command  # noqa: E402,F401


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
