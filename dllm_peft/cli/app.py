"""The Typer application every subcommand module registers itself on (`@app.command`)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dllm-peft",
    help="Fine-tune and evaluate diffusion LLMs with parameter-efficient adapters (NaRA, LoRA, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
