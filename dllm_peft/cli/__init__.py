"""The `dllm-peft` command line: a thin Typer app over the core.

Each subcommand lives in its own module (`*_command.py`) and is one function: flags → config → one core call →
rich output. Expected mistakes (`DllmPeftError`) become one red sentence and exit status 2, never a traceback.
The only layer that prints; it may import every other layer.
"""

from __future__ import annotations

import re
import signal
import sys
import threading

import typer
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
from .help import choices_of


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app, then exits with its status (2 and one sentence for a mistake)."""
    interrupts: list[int] = []

    def on_interrupt(signum, frame):  # noqa: ARG001 - the signal handler's signature
        interrupts.append(signum)  # remembered: a Ctrl-C inside a library's import can surface as any error
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
    previous = signal.signal(signal.SIGINT, on_interrupt) if in_main_thread else None
    try:
        status = app(args=argv, prog_name="dllm-peft", standalone_mode=False)
        if status == 130:  # typer turns a KeyboardInterrupt into a silent exit status 130
            raise KeyboardInterrupt
    except DllmPeftError as error:
        print_error(str(error))
        sys.exit(2)
    except (KeyboardInterrupt, Abort):  # Ctrl-C, also while the command is still starting
        print_error("interrupted")
        sys.exit(130)
    except typer.TyperException as error:  # click's usage errors: a bad choice, an unknown flag, a missing value
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `dllm-peft`: the help, as --help prints it
            typer.echo(error.format_message())
            sys.exit(0)
        if not hasattr(error, "format_message"):
            raise
        print_error(usage_sentence(error))
        sys.exit(getattr(error, "exit_code", 2))
    except Exception as error:  # after a Ctrl-C inside a lazy import (transformers, numpy) any error may follow
        if not (interrupts or _interrupted(error)):
            raise
        print_error("interrupted")
        sys.exit(130)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)  # a caller of main() in Python keeps its own handler
    sys.exit(status if isinstance(status, int) else 0)


def _interrupted(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `error`."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def usage_sentence(error) -> str:
    """Click's message as one sentence of ours: a bad choice names the value and the choices."""
    param = getattr(error, "param", None)
    choices = choices_of(param) if param is not None else ()
    if choices:
        found = re.search(r"('[^']*') is not one of", error.format_message())
        value = f" {found.group(1)}" if found else ""
        return f"unknown {param.opts[0]}{value}; choose one of: {', '.join(choices)}"
    command = getattr(getattr(error, "ctx", None), "command_path", "dllm-peft")
    message = error.format_message().rstrip(".").replace(". Did you mean", "; did you mean")
    if message.endswith("?"):  # click already suggests the fix
        return f"{message[:1].lower()}{message[1:]}"
    return f"{message[:1].lower()}{message[1:]}; see `{command} --help`"
