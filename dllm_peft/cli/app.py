"""The Typer application every subcommand module registers itself on (`@app.command(..., cls=HelpCommand)`).

Shell completion is on (`dllm-peft --install-completion`); `--version` prints the package's version. Nothing here
imports torch: `dllm-peft --help` and `dllm-peft <command> --help` stay fast (benchmarks/startup).
"""

from __future__ import annotations

import typer

from .. import __version__
from .help import HelpGroup

app = typer.Typer(
    name="dllm-peft",
    cls=HelpGroup,
    help="Fine-tune and evaluate diffusion LLMs with parameter-efficient adapters (NaRA, LoRA, ...).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dllm-peft {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """Fine-tune and evaluate diffusion LLMs with parameter-efficient adapters (NaRA, LoRA, ...)."""
