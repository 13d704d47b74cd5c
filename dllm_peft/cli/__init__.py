"""The `dllm-peft` command line: a thin Typer app over the core.

Each subcommand lives in its own module (`*_command.py`) and is one function: flags → config → one core call →
rich output. Expected mistakes (`DllmPeftError`) become one red sentence and exit status 2, never a traceback.
The only layer that prints; it may import every other layer.
"""

from __future__ import annotations

import sys

from typer._click.exceptions import UsageError  # typer bundles its own click
from typer.exceptions import Abort

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
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args:
            app(args=args, prog_name="dllm-peft")  # the help (no_args_is_help); exits
        code = app(args=args, prog_name="dllm-peft", standalone_mode=False)
    except DllmPeftError as error:
        print_error(str(error))
        sys.exit(2)
    except UsageError as error:  # a wrong flag, type or command: one sentence, not typer's boxed usage
        where = error.ctx.command_path if error.ctx is not None else "dllm-peft"
        print_error(f"{error.format_message().rstrip('.')}; see `{where} --help`")
        sys.exit(2)
    except (KeyboardInterrupt, Abort):
        print_error("interrupted")
        sys.exit(130)
    sys.exit(0 if code is None else code)  # a command that returns normally succeeded
