"""`dllm-peft merge`: fold an adapter into its base model and write a full checkpoint."""

from __future__ import annotations

import typer

from ..config import MergeConfig, help_for
from .app import app
from .console import err, out
from .help import DtypeName, HelpCommand, complete_device

H = lambda name: help_for(MergeConfig, name)  # noqa: E731
D = MergeConfig()


@app.command("merge", cls=HelpCommand)
def merge_command(
    adapter: str = typer.Option(D.adapter, help=H("adapter")),
    model: str = typer.Option(None, help=H("model")),
    output: str = typer.Option(D.output, help=H("output")),
    noise_level: float = typer.Option(None, help=H("noise_level")),
    dtype: DtypeName = typer.Option(D.dtype, help=H("dtype")),
    device: str = typer.Option(D.device, help=H("device"), autocompletion=complete_device),
    max_shard_size: str = typer.Option(D.max_shard_size, help=H("max_shard_size")),
    overwrite: bool = typer.Option(D.overwrite, help=H("overwrite")),
) -> None:
    """Merge an adapter into its base model (NaRA at a chosen --noise-level) and write a full checkpoint."""
    config = MergeConfig(**{name: value for name, value in locals().items()})
    from ..adapters.merge import merge_adapter  # torch loads here, not for --help

    with err.status("loading the base model and merging …"):
        result = merge_adapter(config)
    at = "" if result.noise_level is None else f" at λ = {result.noise_level:g}"
    out.print(
        f"[green]✓[/] merged the {result.method} adapter into {result.base_model}{at} "
        f"({result.merged_modules} modules)"
    )
    if config.noise_level is not None and result.noise_level is None:
        out.print(f"  a {result.method} update does not depend on λ, so --noise-level was not needed")
    shards = [name for name in result.files if name.endswith(".safetensors")]
    others = [name for name in result.files if name not in shards]
    out.print(f"  wrote {result.output}/: {len(shards)} {result.dtype} safetensors shard(s), {', '.join(others)}")
