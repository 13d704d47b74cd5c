"""The PNG of `dllm-peft inspect --plot`: how an adapter's update varies with the noise level λ.

Four panels: ‖ΔW(λ)‖_F per module type (and all modules together), ‖C(λ) − I‖_F per shared core, the mean effective
rank per module type, and a heat map of ‖ΔW(λ)‖_F per layer × λ. A LoRA draws flat lines and vertical stripes; a NaRA
adapter shows where along the denoising trajectory its update grows or turns.

Matplotlib's object API with the Agg canvas: no pyplot, so no global figure state and no display is ever needed.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write_bytes
from ..errors import DllmPeftError
from ..outputs import storage_errors
from .summary import AdapterSummary


def plot_summary(summary: AdapterSummary, path: str | Path) -> Path:
    """Draw the four panels of `summary` into the PNG at `path` (written atomically). Returns the path."""
    if summary.table_note:
        raise DllmPeftError(f"--plot has nothing to draw: {summary.table_note}")
    figure = Figure(figsize=(12, 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    (norms, cores), (ranks, heat) = figure.subplots(2, 2)
    levels = summary.levels
    title = f"{summary.method} adapter" + (f" on {summary.base_model}" if summary.base_model else "")
    figure.suptitle(f"{title}: update along the noise level λ (masked fraction)")

    for kind, values in summary.norms_by_type.items():
        norms.plot(levels, values, marker="o", markersize=3, label=kind)
    norms.plot(levels, summary.total_norms, color="black", linestyle="--", label="all modules")
    norms.set(title="‖ΔW(λ)‖_F per module type", xlabel="λ", ylabel="Frobenius norm")
    norms.set_ylim(bottom=0)
    norms.legend(fontsize="small")

    if summary.core_deviation:
        for key, values in summary.core_deviation.items():
            cores.plot(levels, values, marker="o", markersize=3, label=f"core {key}")
        cores.set_ylim(bottom=0)
        cores.legend(fontsize="small")
    else:
        cores.text(0.5, 0.5, f"{summary.method} has no core C(λ)", ha="center", va="center", transform=cores.transAxes)
    cores.set(title="‖C(λ) − I‖_F per shared core", xlabel="λ", ylabel="Frobenius norm")

    for kind, values in summary.effective_rank_by_type.items():
        ranks.plot(levels, values, marker="o", markersize=3, label=kind)
    ranks.set(title="effective rank of ΔW(λ), mean per module type", xlabel="λ", ylabel="exp(entropy of σ / Σσ)")
    ranks.set_ylim(0, 1.1 * max(max(values) for values in summary.effective_rank_by_type.values()) + 0.1)
    ranks.legend(fontsize="small")

    by_layer = summary.norms_by_layer
    half_step = (levels[-1] - levels[0]) / (len(levels) - 1) / 2  # cells centred on the grid points
    image = heat.imshow(
        list(by_layer.values()),  # (layers, levels)
        aspect="auto",
        origin="lower",
        cmap="viridis",
        extent=(levels[0] - half_step, levels[-1] + half_step, -0.5, len(by_layer) - 0.5),
    )
    heat.set_yticks(range(len(by_layer)), list(by_layer), fontsize="small" if len(by_layer) <= 40 else "xx-small")
    heat.set(title="‖ΔW(λ)‖_F per layer (all module types)", xlabel="λ", ylabel="layer")
    figure.colorbar(image, ax=heat, label="Frobenius norm")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    path = Path(path)
    with storage_errors(f"writing --plot {path}", "free space or choose another --plot"):
        atomic_write_bytes(path, buffer.getvalue())
    return path
