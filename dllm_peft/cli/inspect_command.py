"""`dllm-peft inspect`: what an adapter holds and how its update varies with the noise level λ."""

from __future__ import annotations

import json as json_module
import math
import re
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from ..config import InspectConfig, help_for
from ..errors import require_extra
from .app import app
from .help import HelpCommand

if TYPE_CHECKING:  # torch loads when the command runs, not for --help
    from ..adapters.summary import AdapterSummary
from .console import out

H = lambda name: help_for(InspectConfig, name)  # noqa: E731
D = InspectConfig()
# narrow enough for 11 λ columns in 80 characters
COMPACT = {"box": box.SIMPLE_HEAD, "pad_edge": False, "padding": (0, 1), "collapse_padding": True}


@app.command("inspect", cls=HelpCommand)
def inspect_command(
    adapter: str = typer.Argument(..., help=H("adapter")),
    levels: int = typer.Option(D.levels, help=H("levels")),
    model: str = typer.Option(None, help=H("model")),
    plot: str = typer.Option(None, help=H("plot")),
    json: bool = typer.Option(D.json, help=H("json")),
) -> None:
    """Report an adapter's settings, parameter counts and per-noise-level update norms (works on the file alone)."""
    config = InspectConfig(**{name: value for name, value in locals().items()})
    if config.plot is not None:
        require_extra("matplotlib", "plot", "dllm-peft inspect --plot")
        from ..outputs import check_output_path

        check_output_path(config.plot, "--plot", "file")  # before any work
    from ..adapters.summary import adapter_in_backbone, standalone_adapter, summarize
    from ..models import load_backbone

    if config.model is None:
        parts = standalone_adapter(config.adapter)
    else:
        parts = adapter_in_backbone(load_backbone(config.model), config.adapter)
    summary = summarize(parts, config.levels, source=config.adapter)
    if config.plot is not None:
        from ..adapters.plots import (
            plot_summary,  # matplotlib is imported only when a plot is asked for
        )

        plot_summary(summary, config.plot)
    if config.json:
        typer.echo(json_module.dumps(summary.to_dict(), indent=2))
        return
    print_header(summary)
    if summary.table_note:
        out.print(f"  per-λ table  none: {summary.table_note}")
        return
    out.print("\n‖ΔW(λ)‖_F per module type, core deviation ‖C(λ) − I‖_F, mean effective rank")
    out.print(level_table(summary))
    title, table = layer_table(summary)
    out.print(title)
    out.print(table)
    if config.plot is not None:
        out.print(f"wrote {config.plot}")


def print_header(summary: AdapterSummary) -> None:
    skipped = ("method", "target_modules")
    settings = {key: value for key, value in summary.settings.items() if key not in skipped and value is not None}
    targets = summary.settings.get("target_modules") or list(summary.norms_by_type)
    # full module names (a PEFT folder lists every layer's) read as their distinct last parts, as our own files do
    targets = list(dict.fromkeys(
        name.rsplit(".", 1)[-1] if re.fullmatch(r"[\w.]+", name) else name for name in map(str, targets)
    ))
    out.print(f"[bold]{summary.method}[/] adapter  {summary.source}")
    rows = [("base model", summary.base_model or "not recorded"),
            ("settings", ", ".join(f"{key}={value}" for key, value in settings.items()) or "none")]
    if targets:
        rows.append(("targets", f"{', '.join(targets)} ({len(summary.module_norms) or 'see --model for the'} modules)"))
    rows += [("parameters", parameter_line(summary)),
             ("update", "changes with λ" if summary.noise_dependent else "the same at every λ")]
    if not out.is_terminal:  # a log: one line per row, no padding
        for name, value in rows:
            out.print(f"  {name:<13}{value}")
        return
    grid = Table.grid(padding=(0, 3))  # in a terminal a long value wraps under itself, not under the names
    grid.add_column(no_wrap=True)
    grid.add_column()
    for name, value in rows:
        grid.add_row(f"  {name}", value)
    out.print(grid)


def parameter_line(summary: AdapterSummary) -> str:
    """Trainable parameters, the shared hypernetwork's share of them, and the base model's size when known."""
    if summary.trainable_parameters is None:
        line = f"{summary.stored_values:,} values stored (pass --model for the trainable count)"
    else:
        share = (summary.shared_parameters or 0) / max(1, summary.trainable_parameters)
        line = f"adapter {summary.trainable_parameters:,} trainable"
        if summary.shared_parameters:
            line += f", of which the shared hypernetwork/core {summary.shared_parameters:,} ({share:.1%})"
    if summary.base_parameters is None:
        return line + "; base model size unknown (pass --model)"
    ratio = (summary.trainable_parameters or 0) / max(1, summary.base_parameters)
    return line + f"; base model {summary.base_parameters:,} (adapter = {ratio:.3%} of it)"


def level_table(summary: AdapterSummary) -> Table:
    """One row per λ: ‖ΔW(λ)‖_F of all modules and per module type, ‖C(λ) − I‖_F, mean effective rank."""
    table = Table(**COMPACT)
    by_type = summary.norms_by_type
    ranks = summary.effective_rank_by_type
    table.add_column("λ", justify="right")
    table.add_column("all", justify="right")
    for kind in by_type:
        table.add_column(kind, justify="right")
    for key in summary.core_deviation:
        table.add_column(f"‖C−I‖ {key}" if len(summary.core_deviation) > 1 else "‖C−I‖", justify="right")
    table.add_column("eff. rank", justify="right")
    for index, level in enumerate(summary.levels):
        mean_rank = sum(values[index] for values in ranks.values()) / len(ranks)
        table.add_row(
            f"{level:.2f}",
            f"{summary.total_norms[index]:.4g}",
            *(f"{values[index]:.4g}" for values in by_type.values()),
            *(f"{values[index]:.4g}" for values in summary.core_deviation.values()),
            f"{mean_rank:.2f}",
        )
    return table


def layer_table(summary: AdapterSummary) -> tuple[str, Table]:
    """Title and table with one row per layer, one column per λ: ‖ΔW(λ)‖_F of the layer's modules together."""
    by_layer = summary.norms_by_layer
    peak = max((value for values in by_layer.values() for value in values), default=0.0)
    exponent = math.floor(math.log10(peak)) if peak > 0 else 0
    if 0 <= exponent <= 2:
        exponent = 0  # plain numbers already fit the columns
    unit = f", in units of 1e{exponent}" if exponent else ""
    table = Table(**COMPACT)
    table.add_column("layer", justify="right")
    for level in summary.levels:
        table.add_column(f"{level:.2g}", justify="right")
    for label, values in by_layer.items():
        table.add_row(label, *(f"{value / 10**exponent:.3g}" for value in values))
    return f"‖ΔW(λ)‖_F per layer (columns: λ{unit})", table
