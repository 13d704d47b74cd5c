"""`dllm-peft export`: write an adapter in another library's format (a stock PEFT LoRA, DoRA or HiRA adapter)."""

from __future__ import annotations

import typer

from ..config import ExportConfig, help_for
from .app import app
from .console import out
from .help import ExportFormat, HelpCommand

H = lambda name: help_for(ExportConfig, name)  # noqa: E731
D = ExportConfig()


@app.command("export", cls=HelpCommand)
def export_command(
    adapter: str = typer.Option(D.adapter, help=H("adapter")),
    format: ExportFormat = typer.Option(D.format, help=H("format")),  # noqa: A002
    noise_level: float = typer.Option(None, help=H("noise_level")),
    output: str = typer.Option(D.output, help=H("output")),
    overwrite: bool = typer.Option(D.overwrite, help=H("overwrite")),
) -> None:
    """Export an adapter as a stock PEFT directory: LoRA (NaRA at a chosen --noise-level: B' = B·C(λ)), DoRA or HiRA."""
    config = ExportConfig(**{name: value for name, value in locals().items()})
    from ..adapters.export import (  # torch loads here
        MODEL_CARD_FILE,
        PEFT_CONFIG_FILE,
        PEFT_WEIGHTS_FILE,
        export_adapter,
    )

    result = export_adapter(config)
    at = "" if result.noise_level is None else f" at λ = {result.noise_level:g}"
    out.print(
        f"[green]✓[/] exported the {result.method} adapter{at} as a {result.form} "
        f"(rank {result.rank}, {result.modules} modules)"
    )
    if config.noise_level is not None and result.noise_level is None:
        out.print(f"  a {result.method} update does not depend on λ, so --noise-level was not needed")
    out.print(f"  wrote {result.output}/{PEFT_CONFIG_FILE}, {PEFT_WEIGHTS_FILE} and the model card {MODEL_CARD_FILE}")
    out.print(f"  load it with peft.AutoPeftModel.from_pretrained({str(result.output)!r}) (the card says how)")
