"""`dllm-peft train`: fine-tune an adapter with masked-diffusion SFT."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import TrainConfig, help_for
from ..registry import METHODS
from ..train import TrainProgress, train
from . import app
from .console import err, out

H = lambda name: help_for(TrainConfig, name)  # noqa: E731
D = TrainConfig()


@app.command("train")
def train_command(
    method: str = typer.Option(D.method, help=f"{H('method')} One of: {', '.join(METHODS)}."),
    model: str = typer.Option(D.model, help=H("model")),
    data: str = typer.Option(D.data, help=H("data")),
    output: str = typer.Option(D.output, help=H("output")),
    max_steps: int = typer.Option(D.max_steps, help=H("max_steps")),
    rank: int = typer.Option(D.rank, help=H("rank")),
    eta: float = typer.Option(D.eta, help=H("eta")),
    dropout: float = typer.Option(D.dropout, help=H("dropout")),
    targets: str = typer.Option(None, help=H("targets")),
    lr: float = typer.Option(D.lr, help=H("lr")),
    batch_size: int = typer.Option(D.batch_size, help=H("batch_size")),
    grad_accum: int = typer.Option(D.grad_accum, help=H("grad_accum")),
    max_length: int = typer.Option(D.max_length, help=H("max_length")),
    overlong: str = typer.Option(D.overlong, help=H("overlong")),
    prompt_field: str = typer.Option(D.prompt_field, help=H("prompt_field")),
    response_field: str = typer.Option(D.response_field, help=H("response_field")),
    seed: int = typer.Option(D.seed, help=H("seed")),
    overwrite: bool = typer.Option(D.overwrite, help=H("overwrite")),
) -> None:
    """Fine-tune an adapter (default: NaRA on the built-in model and task)."""
    config = TrainConfig(**{name: value for name, value in locals().items()})
    columns = (
        TextColumn("[bold]train[/] {task.fields[method]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        tasks: list = []  # the bar appears with the first step, after data and model checks have passed

        def on_progress(update: TrainProgress) -> None:
            fields = {"loss": update.loss, "lr": update.lr, "tps": update.tokens_per_second}
            if not tasks:
                tasks.append(progress.add_task("train", total=config.max_steps, method=config.method, **fields))
            progress.update(tasks[0], completed=update.step, **fields)

        result = train(config, on_progress)
    first, last = result.losses[0], sum(result.losses[-5:]) / len(result.losses[-5:])
    out.print(
        f"[green]✓[/] {config.method} adapter ({result.trainable_parameters:,} trainable parameters) "
        f"trained on {result.examples} examples for {len(result.losses)} steps; "
        f"loss {first:.4f} → {last:.4f} (mean of the last 5)"
    )
    if result.overlong:
        out.print(f"  {result.overlong} example(s) exceeded --max-length and were handled by --overlong {config.overlong}")
    out.print(f"  wrote {result.output}/adapter_config.json and adapter_model.safetensors")
