"""`dllm-peft eval`: score a model, or an adapter next to its base, on the commonsense, math, code or built-in tasks.

Flags → `EvalConfig` (what to evaluate) whose `sampler` holds the sampler flags the user typed (`SamplerConfig`
fields; untyped lengths follow each task) → `evaluate()` → a rich table on stdout, progress bars on stderr, and with
`--output` the results JSON plus a Markdown table beside it (`--log-samples`: per-document JSON lines too).
On a terminal the bars show done/total, elapsed and remaining time; in a log (stderr not a terminal) a plain line
per few percent or minute says the same. Under `accelerate launch` only rank 0 prints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import os
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..config import EvalConfig, SamplerConfig, help_for
from ..errors import require_extra
from .app import app
from .help import (
    CacheName,
    ChatTemplate,
    DtypeName,
    EosSuppression,
    HelpCommand,
    ProtocolName,
    RemaskingName,
    complete_device,
)

if TYPE_CHECKING:  # torch and lm-eval load when the command runs, not for --help
    from ..evaluation.evaluate import EvalProgress, EvalResults
from .console import err, out

SAMPLER_FIELDS = {field.name for field in dataclasses.fields(SamplerConfig)}
H = lambda name: help_for(SamplerConfig if name in SAMPLER_FIELDS else EvalConfig, name)
PER_TASK = " Default: the task's answer length."
E = EvalConfig()
S = SamplerConfig()


@app.command("eval", cls=HelpCommand)
def eval_command(
    ctx: typer.Context,
    model: str = typer.Option(None, help=H("model"), show_default=False),
    adapter: str = typer.Option(None, help=H("adapter"), show_default=False),
    tasks: str = typer.Option(E.tasks, help=H("tasks")),
    data_dir: str = typer.Option(None, help=H("data_dir"), show_default=False),
    limit: int = typer.Option(None, help=H("limit"), show_default=False),
    num_fewshot: int = typer.Option(E.num_fewshot, help=H("num_fewshot")),
    protocol: ProtocolName = typer.Option(E.protocol, help=H("protocol")),
    output: str = typer.Option(None, help=H("output"), show_default=False),
    log_samples: bool = typer.Option(E.log_samples, help=H("log_samples")),
    allow_code_execution: bool = typer.Option(E.allow_code_execution, help=H("allow_code_execution")),
    compare_base: bool = typer.Option(E.compare_base, help=H("compare_base")),
    mc_num: int = typer.Option(E.mc_num, help=H("mc_num")),
    mc_estimator: str = typer.Option(E.mc_estimator, help=H("mc_estimator")),
    mc_stop_se: float = typer.Option(E.mc_stop_se, help=H("mc_stop_se")),
    mc_futility_se: float = typer.Option(E.mc_futility_se, help=H("mc_futility_se")),
    batch_size: int = typer.Option(E.batch_size, help=H("batch_size")),
    chat_template: ChatTemplate = typer.Option(E.chat_template, help=H("chat_template")),
    seed: int = typer.Option(E.seed, help=H("seed")),
    dtype: DtypeName = typer.Option(E.dtype, help=H("dtype")),
    device: str = typer.Option(E.device, help=H("device"), autocompletion=complete_device),
    trust_remote_code: bool = typer.Option(E.trust_remote_code, help=H("trust_remote_code")),
    sampler_preset: str = typer.Option(E.sampler_preset, "--sampler-preset", "--sampler", help=H("sampler_preset")),
    gen_length: int = typer.Option(None, help=H("gen_length") + PER_TASK, show_default=False),
    steps: int = typer.Option(None, help=H("steps") + " Default: --gen-length.", show_default=False),
    block_length: int = typer.Option(None, help=H("block_length") + " Default: --gen-length.", show_default=False),
    remasking: RemaskingName = typer.Option(S.remasking, help=H("remasking")),
    temperature: float = typer.Option(S.temperature, help=H("temperature")),
    cfg_scale: float = typer.Option(S.cfg_scale, help=H("cfg_scale")),
    threshold: float = typer.Option(None, help=H("threshold"), show_default=False),
    cache: CacheName = typer.Option(S.cache, help=H("cache")),
    cache_refresh: int = typer.Option(S.cache_refresh, help=H("cache_refresh")),
    entropy_bound: float = typer.Option(None, help=H("entropy_bound"), show_default=False),
    eos_suppression: EosSuppression = typer.Option(S.eos_suppression, help=H("eos_suppression")),
    stop_at_eos: bool = typer.Option(S.stop_at_eos, help=H("stop_at_eos")),
    schedule: str = typer.Option(S.schedule, help=H("schedule")),
    alg: str = typer.Option(S.alg, help=H("alg")),
    alg_temp: float = typer.Option(None, help=H("alg_temp")),
    top_p: float = typer.Option(None, help=H("top_p")),
    top_k: int = typer.Option(None, help=H("top_k")),
) -> None:
    """Evaluate a model or adapter (with its base) on tasks: commonsense, math, code, arc, or single tasks."""
    flags = {name: value for name, value in locals().items() if name != "ctx"}
    require_extra("lm_eval", "eval", "dllm-peft eval")
    typed_sampler = {name: value for name, value in flags.items() if name in SAMPLER_FIELDS and _typed(ctx, name)}
    config = EvalConfig(sampler=typed_sampler, **{k: v for k, v in flags.items() if k not in SAMPLER_FIELDS})
    results = _run(config)
    if not results.runs:  # another process of a data-parallel run: rank 0 reports
        return
    out.print(results_table(results))
    if config.output:
        out.print(f"  wrote {config.output} and {Path(config.output).with_suffix('.md')}")
    if results.samples:
        from ..evaluation.evaluate import samples_path

        out.print(f"  wrote per-document samples to {samples_path(Path(config.output), '*', '*').parent}/")


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave flag `name` (by the source's name: typer may bundle its own copy of click)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _run(config: EvalConfig) -> EvalResults:
    from ..evaluation.evaluate import evaluate
    from ..evaluation.progress import PlainProgress

    columns = (TextColumn("[bold]{task.description}[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    progress = Progress(*columns, console=err, transient=True)
    bars: dict[tuple[str, str], int] = {}
    plain = None if err.is_terminal else PlainProgress(err.file)
    rank = int(os.environ.get("RANK", "0"))

    def on_progress(update: EvalProgress) -> None:
        if rank != 0:
            return
        if plain is not None:  # a log file: a line per few percent or minute
            plain(f"{update.run} {update.kind}", update.done, update.total)
            return
        key = (update.run, update.kind)
        if not bars:
            progress.start()  # only once work runs: an early error is then printed alone
        if key not in bars:
            adaptive = config.mc_estimator == "adaptive"  # it reports finished requests, not rows
            unit = ("requests" if adaptive else "samples") if update.kind.startswith("loglikelihood") else "prompts"
            bars[key] = progress.add_task(f"{update.run} · {update.kind} ({unit})", total=update.total)
        progress.update(bars[key], completed=update.done, total=update.total)

    def on_notice(text: str) -> None:
        (progress.console if bars else err).print(f"[yellow]note:[/] {text}")

    try:
        return evaluate(config, on_progress, on_notice)
    finally:
        if bars:
            progress.stop()


def results_table(results: EvalResults) -> Table:
    """One row per task; a column per run (base, adapter) with ± standard error, and their difference."""
    runs = list(results.runs)
    title = results.model + (f" + {results.adapter}" if results.adapter else "")
    table = Table(title=title, title_justify="left")
    for column in ("task", "metric", *runs, *(["Δ"] if len(runs) == 2 else []), "n"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task in results.runs[runs[0]]:
        scores = [results.runs[run][task] for run in runs]
        cells = [f"{100 * s.value:.1f}" + (f" ± {100 * s.stderr:.1f}" if s.stderr is not None else "") for s in scores]
        delta = [f"{100 * (scores[1].value - scores[0].value):+.1f}"] if len(scores) == 2 else []
        table.add_row(task, scores[0].metric, *cells, *delta, str(scores[0].documents))
    return table
