"""`dllm-peft train`: fine-tune an adapter with masked-diffusion SFT (one process, or several: `accelerate launch`)."""

from __future__ import annotations

import os
import sys

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..config import TrainConfig, help_for
from ..errors import DllmPeftError
from .app import app
from .console import err, out
from .help import (
    ChatTemplate,
    DtypeName,
    HelpCommand,
    MethodName,
    NoiseDraw,
    OverlongPolicy,
    PrecisionName,
    RecipeName,
    complete_device,
)

H = lambda name: help_for(TrainConfig, name)  # noqa: E731
D = TrainConfig()


@app.command("train", cls=HelpCommand)
def train_command(
    ctx: typer.Context,
    method: MethodName = typer.Option(D.method, help=H("method")),
    model: str = typer.Option(D.model, help=H("model")),
    data: str = typer.Option(D.data, help=H("data")),
    output: str = typer.Option(D.output, help=H("output")),
    recipe: RecipeName = typer.Option(None, help=H("recipe"), show_default=False),
    config: str = typer.Option(None, help=H("config"), show_default=False),
    max_steps: int = typer.Option(D.max_steps, help=H("max_steps")),
    epochs: float = typer.Option(None, help=H("epochs"), show_default=False),
    lr: float = typer.Option(D.lr, help=H("lr")),
    hypernetwork_lr: float = typer.Option(None, help=H("hypernetwork_lr"), show_default=False),
    batch_size: int = typer.Option(D.batch_size, help=H("batch_size")),
    grad_accum: int = typer.Option(D.grad_accum, help=H("grad_accum")),
    rank: int = typer.Option(D.rank, help=H("rank")),
    eta: float = typer.Option(D.eta, help=H("eta")),
    dropout: float = typer.Option(D.dropout, help=H("dropout")),
    targets: str = typer.Option(None, help=H("targets"), show_default=False),
    max_length: int = typer.Option(D.max_length, help=H("max_length")),
    overlong: OverlongPolicy = typer.Option(D.overlong, help=H("overlong")),
    padding: str = typer.Option(D.padding, help=H("padding")),
    noise_draw: NoiseDraw = typer.Option(D.noise_draw, help=H("noise_draw")),
    chat_template: ChatTemplate = typer.Option(D.chat_template, help=H("chat_template")),
    prompt_field: str = typer.Option(D.prompt_field, help=H("prompt_field")),
    response_field: str = typer.Option(D.response_field, help=H("response_field")),
    val_data: str = typer.Option(None, help=H("val_data"), show_default=False),
    val_size: int = typer.Option(D.val_size, help=H("val_size")),
    val_noise_levels: str = typer.Option(D.val_noise_levels, help=H("val_noise_levels")),
    eval_every: int = typer.Option(D.eval_every, help=H("eval_every")),
    save_every: int = typer.Option(D.save_every, help=H("save_every")),
    keep_checkpoints: int = typer.Option(D.keep_checkpoints, help=H("keep_checkpoints")),
    resume: bool = typer.Option(D.resume, help=H("resume")),
    overwrite: bool = typer.Option(D.overwrite, help=H("overwrite")),
    precision: PrecisionName = typer.Option(D.precision, help=H("precision")),
    dtype: DtypeName = typer.Option(D.dtype, help=H("dtype")),
    device: str = typer.Option(D.device, help=H("device"), autocompletion=complete_device),
    trust_remote_code: bool = typer.Option(D.trust_remote_code, help=H("trust_remote_code")),
    gradient_checkpointing: bool = typer.Option(D.gradient_checkpointing, help=H("gradient_checkpointing")),
    seed: int = typer.Option(D.seed, help=H("seed")),
    adapter_option: list[str] = typer.Option(None, help=H("adapter_option"), show_default=False),
    init_adapter: str = typer.Option(None, help=H("init_adapter"), show_default=False),
) -> None:
    """Fine-tune an adapter (default: NaRA on the built-in model and task); --recipe applies the reference settings."""
    values = dict(locals())
    typed = {name: value for name, value in values.items() if name != "ctx" and _typed(ctx, name)}
    main_process = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch`, only rank 0 speaks
    from ..training.recipes import resolve_train_config  # torch is imported here, not for --help
    from ..training.train import TrainingInterrupted

    try:
        settings = resolve_train_config(typed)
        result = _run(settings, main_process)
    except DllmPeftError:
        if not main_process:
            raise typer.Exit(2)  # rank 0 prints the same sentence
        raise
    except TrainingInterrupted as stop:
        if main_process:
            where = f"saved {stop.checkpoint}; continue with --resume" if stop.checkpoint else "nothing was saved"
            err.print(f"[yellow]stopped[/] after step {stop.step}: {where} (same --output)", soft_wrap=True)
        sys.exit(130)  # SystemExit passes typer by: its own 130 means an interruption nobody reported yet
    if not result.main_process:
        return
    first, last = result.losses[0], sum(result.losses[-5:]) / len(result.losses[-5:])
    out.print(
        f"[green]✓[/] {settings.method} adapter ({result.trainable_parameters:,} trainable parameters) "
        f"trained on {result.examples} examples for {len(result.losses)} steps; "
        f"loss {first:.4f} → {last:.4f} (mean of the last 5)"
    )
    if len(result.validation) > 1:
        before, after = result.validation[0], result.validation[-1]
        levels = "  ".join(
            f"{after.routed.get(level, level):.3g}: {before.by_noise_level[level]:.3f} → {loss:.3f}"
            for level, loss in after.by_noise_level.items()
        )
        out.print(f"  validation loss {before.loss:.4f} → {after.loss:.4f}; at λ {levels}")
    if result.overlong:
        handled = f"were handled by --overlong {settings.overlong}"
        out.print(f"  {result.overlong} example(s) exceeded --max-length and {handled}")
    from ..adapters.files import CONFIG_FILE, WEIGHTS_FILE

    out.print(f"  wrote {result.output}/{CONFIG_FILE} and {WEIGHTS_FILE}; metrics in metrics.jsonl")


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave flag `name` (only those override the recipe and the settings file)."""
    source = ctx.get_parameter_source(name)  # by name: typer may vendor its own copy of click's enum
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _run(settings: TrainConfig, main_process: bool):
    from ..training.train import TrainProgress, TrainReport, train

    columns = (
        TextColumn("[bold]train[/] {task.fields[method]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    logging = main_process and not err.is_terminal  # piped to a file: a line every 5 % of the run, no bar
    progress = Progress(*columns, console=err, transient=False, disable=not main_process or logging)
    tasks: list = []  # the bar appears with the first step, after the data and model checks have passed

    def on_progress(update: TrainProgress) -> None:
        fields = {"loss": update.loss, "lr": update.lr, "tps": update.tokens_per_second}
        if logging and (update.step % max(1, update.max_steps // 20) == 0 or update.step == update.max_steps):
            err.print(
                f"step {update.step}/{update.max_steps} loss {update.loss:.4f} lr {update.lr:.2e} "
                f"{update.tokens_per_second:,.0f} tok/s", highlight=False,
            )
        if not tasks:  # a resumed run's bar starts where the run stands
            progress.start()  # only now: an early error is then printed alone
            start = {"total": update.max_steps, "completed": update.step - 1, "method": settings.method}
            tasks.append(progress.add_task("train", **start, **fields))
        progress.update(tasks[0], completed=update.step, **fields)

    def on_report(report: TrainReport) -> None:
        progress.console.print(_describe(report, settings), highlight=False, soft_wrap=True)

    try:
        return train(settings, on_progress, on_report)
    finally:
        if tasks:
            progress.stop()


def _describe(report, settings: TrainConfig) -> str:
    from ..training.train import CheckpointSaved, DataReport, NoiseLevelCoverage, Resumed
    from ..training.validation import ValidationReport

    if isinstance(report, DataReport):
        lengths = report.lengths
        handled = {"drop": "dropped", "truncate": f"{lengths.truncated} truncated, {lengths.dropped} dropped"}
        over = f"{lengths.overlong} of {lengths.total} longer than --max-length {lengths.max_length}"
        if lengths.overlong:
            over += f" ({handled[lengths.policy]})"
        return (
            f"data: {report.train} training examples from {settings.data} ({over}, longest {lengths.longest}); "
            f"validation: {report.validation} ({report.validation_origin}); {report.steps} steps × "
            f"{report.examples_per_step} examples ({report.processes} process{'es' if report.processes > 1 else ''}"
            f"{', FSDP' if report.sharded else ''})"
        )
    if isinstance(report, ValidationReport):
        levels = "  ".join(
            f"{report.routed.get(level, level):.3g}: {loss:.3f}" for level, loss in report.by_noise_level.items()
        )
        return f"step {report.step} validation loss {report.loss:.4f} | at λ {levels}"
    if isinstance(report, NoiseLevelCoverage):
        lengths = ", ".join(str(length) for length in report.response_lengths)
        if report.noise_draw == "continuous":
            return "[dim]noise levels: training routes a dense λ in (0, 1] (--noise-draw continuous), so every λ " \
                   "the sampler routes lies within the trained range[/]"
        if not report.missing:
            return f"[dim]noise levels: response regions of {lengths} tokens route every λ of the sampler's " \
                   f"{report.gen_length}-token canvas[/]"
        shown = ", ".join(f"{level:.3g}" for level in report.missing[:6]) + (" …" if len(report.missing) > 6 else "")
        return (
            f"[yellow]warning[/]: {len(report.missing)} λ value(s) the sampler routes on its default "
            f"{report.gen_length}-token canvas are never routed in training ({shown}; response regions of "
            f"{lengths} tokens); the noise-conditioned adapter will extrapolate there: use --noise-draw continuous or --padding canvas"
        )
    if isinstance(report, CheckpointSaved):
        return f"[dim]saved checkpoint {report.path}[/]"
    if isinstance(report, Resumed):
        if report.checkpoint is None:
            return "resuming: the run has no checkpoint yet, starting again from step 0"
        skipped = "".join(f"checkpoint {path} is damaged ({why}), skipped and removed; " for path, why in report.damaged)
        return f"{skipped}resuming from {report.checkpoint} (step {report.step})"
    raise TypeError(f"unknown report {report!r}")
