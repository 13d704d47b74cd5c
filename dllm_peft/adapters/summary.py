"""What `dllm-peft inspect` reports: an adapter's settings, its parameter counts and how its update varies with λ.

For every adapted module and every noise level λ of a grid: ‖ΔW(λ)‖_F and the effective rank of ΔW(λ) (Roy &
Vetterli 2007: the exponential of the entropy of the normalised singular values), aggregated per layer and per module
type, plus ‖C(λ) − I‖_F for every shared square core (NaRA's). A static method (LoRA) draws flat lines; a NaRA adapter
shows how much the noise level reshapes its update, which is the point of the report.

Low-rank route: a layer offering `low_rank_factors(λ)` → (L (out, r), R (r, in)) with ΔW = L·R never has its (out, in)
update formed. With the reduced QR factorisations L = Q_L·T_L and Rᵀ = Q_R·T_R, ΔW = Q_L·(T_L·T_Rᵀ)·Q_Rᵀ, so ΔW has the
singular values of the r × r matrix T_L·T_Rᵀ, and ‖ΔW‖_F is their root sum of squares. Other layers fall back to
the dense `delta_weight`.

The report works from the adapter file alone (`standalone_adapter`): layers are rebuilt by name around shape-only base
layers on the meta device, so no base model is loaded. Only the low-rank route is used then; a method without it
(DoRA, HiRA: their update reads W0) gets its table with `--model`, and so do methods whose layers the file cannot
rebuild. Methods without a weight update (prompt tuning, Houlsby, ...) report their parameter counts only.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion.conditioning import ROUTER_ATTRIBUTE, NoiseRouter, find_router
from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .base import (
    AdapterLayer,
    MethodConfig,
    adapter_layers,
    adapter_state_dict,
    find_model_adapter,
)
from .files import config_from_record, load_adapter, read_adapter
from .registry import Method


@dataclasses.dataclass(frozen=True)
class AdapterParts:
    """An adapter's layers and shared router, rebuilt from its file or injected in a loaded base model.

    `layers` is empty when the file alone cannot rebuild them (methods acting on the whole model, or layers whose
    shapes the file does not reveal); the parameter counts are then None and `stored_values` is what is known.
    """

    record: dict[str, Any]
    method: Method
    config: MethodConfig
    layers: dict[str, AdapterLayer]
    router: NoiseRouter | None
    stored_values: int  # numbers stored in the adapter file, buffers included
    trainable_parameters: int | None
    shared_parameters: int | None  # parameters of the modules every layer shares (NaRA's hypernetwork)
    base_parameters: int | None = None  # known only when the base model was loaded

    @property
    def has_base_weights(self) -> bool:
        """False for a standalone adapter, whose base layers are shape-only stand-ins on the meta device."""
        return self.base_parameters is not None


def standalone_adapter(path: str | Path) -> AdapterParts:
    """Rebuild an adapter from its `.safetensors` file (or directory) alone, without loading the base model."""
    record, tensors = read_adapter(path)
    method, config = config_from_record(record)
    stored = sum(tensor.numel() for tensor in tensors.values())
    names = record.get("adapted_modules") or []
    rebuildable = issubclass(method.layer_class, AdapterLayer) and all(
        f"{name}.lora_A" in tensors and f"{name}.lora_B" in tensors for name in names
    )
    if not names or not rebuildable:
        return AdapterParts(record, method, config, {}, None, stored, None, None)
    shared = method.layer_class.build_shared(config, names)
    router = None
    if shared or method.layer_class.needs_noise_level:
        router = NoiseRouter()
        router.shared.update(shared)
    layers = {name: method.layer_class(_shape_only_linear(name, tensors), config, name, router) for name in names}
    expected = {f"{name}.{key}": tensor for name, layer in layers.items() for key, tensor in layer.adapter_parameters()}
    shared_tensors = [] if router is None else [*router.named_parameters(), *router.named_buffers()]
    expected.update({f"{ROUTER_ATTRIBUTE}.{key}": tensor for key, tensor in shared_tensors})
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise DllmPeftError(
            f"{str(path)!r} does not match its own metadata: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for key, target in expected.items():
            if tensors[key].shape != target.shape:
                raise DllmPeftError(
                    f"tensor {key!r} in {str(path)!r} has shape {tuple(tensors[key].shape)}, its metadata implies "
                    f"{tuple(target.shape)}; the file is damaged"
                )
            if not target.is_meta:  # a meta one derives from the weightless base (DoRA's m): assigned below
                target.copy_(tensors[key])
    for name, layer in layers.items():
        derived = {key: tensors[f"{name}.{key}"] for key, target in layer.adapter_parameters() if target.is_meta}
        if derived:
            layer.load_state_dict(derived, strict=False, assign=True)
    for layer in layers.values():
        layer.eval()
    trainable = sum(t.numel() for t in expected.values() if isinstance(t, nn.Parameter))
    return AdapterParts(record, method, config, layers, router, stored, trainable, _shared_count(router))


def _shape_only_linear(name: str, tensors: dict[str, torch.Tensor]) -> nn.Linear:
    """A weightless stand-in for the base layer `name`: A is ([K,] r, in) and B is ([K,] out, r) in every method."""
    in_features, out_features = tensors[f"{name}.lora_A"].shape[-1], tensors[f"{name}.lora_B"].shape[-2]
    return nn.Linear(in_features, out_features, bias=False, device="meta")


def _shared_count(router: NoiseRouter | None) -> int:
    return 0 if router is None else sum(p.numel() for p in router.parameters())


def adapter_in_backbone(backbone: Backbone, path: str | Path) -> AdapterParts:
    """Inject the adapter at `path` into `backbone` (shape and name checks included) and collect its parts."""
    record = load_adapter(backbone, path)
    method, config = config_from_record(record)
    model = backbone.model
    layers, router, whole_model = adapter_layers(model), find_router(model), find_model_adapter(model)
    state = adapter_state_dict(model)
    # what the adapter adds to the model; full fine-tuning adds nothing, its trainable tensors are the base's own
    added = {id(tensor) for layer in layers.values() for _, tensor in layer.adapter_parameters()}
    added |= {id(p) for module in (router, whole_model) if module is not None for p in module.parameters()}
    return AdapterParts(
        record,
        method,
        config,
        layers,
        router,
        stored_values=sum(tensor.numel() for tensor in state.values()),
        trainable_parameters=sum(t.numel() for t in state.values() if isinstance(t, nn.Parameter)),
        shared_parameters=_shared_count(router),
        base_parameters=sum(p.numel() for p in model.parameters() if id(p) not in added),
    )


# -- the numbers ----------------------------------------------------------------------------------------------------
def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(entropy of σ / Σσ): 1 for a rank-one update, r for r equal singular values, 0 for a zero update."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    shares = singular_values[singular_values > 0] / total
    return math.exp(-(shares * shares.log()).sum().item())


def singular_values(layer: AdapterLayer, noise_level: float | None) -> torch.Tensor:
    """Singular values of ΔW(λ), shape (k,), float64; through the r × r core whenever the layer is low-rank."""
    factors = getattr(layer, "low_rank_factors", None)
    with torch.no_grad():
        if factors is None:
            dense = layer.delta_weight(noise_level)  # (out, in)
            return torch.linalg.svdvals(dense.double())
        left, right = factors(noise_level)  # (out, r), (r, in)
        left_triangle = torch.linalg.qr(left.double()).R  # (r, r)
        right_triangle = torch.linalg.qr(right.double().T).R  # (r, r)
        return torch.linalg.svdvals(left_triangle @ right_triangle.T)


def core_deviations(router: NoiseRouter | None, levels: list[float]) -> dict[str, list[float]]:
    """‖C(λ) − I‖_F per shared square core (NaRA: one per group), for every λ in `levels`."""
    deviations: dict[str, list[float]] = {}
    if router is None:
        return deviations
    with torch.no_grad():
        for key, module in router.shared.items():
            noise = torch.tensor(levels, dtype=torch.float32) if module.needs_noise_level else None
            cores = module(noise)  # (len(levels) or 1, r, r)
            if cores.dim() != 3 or cores.shape[-1] != cores.shape[-2]:
                continue  # not a core: a shared module of another shape has no identity to deviate from
            identity = torch.eye(cores.shape[-1], dtype=torch.float64, device=cores.device)
            norms = torch.linalg.matrix_norm(cores.double() - identity)  # (len(levels) or 1,)
            deviations[key] = norms.expand(len(levels)).tolist()
    return deviations


@dataclasses.dataclass(frozen=True)
class AdapterSummary:
    """Everything `inspect` prints, plots and writes as JSON; norms are lists aligned with `levels`.

    `module_norms` is empty, and `table_note` says why, when there is no weight update to tabulate.
    """

    source: str
    method: str
    base_model: str | None
    settings: dict[str, Any]
    noise_dependent: bool
    stored_values: int
    trainable_parameters: int | None
    shared_parameters: int | None
    base_parameters: int | None
    levels: list[float]
    module_norms: dict[str, list[float]]
    module_effective_ranks: dict[str, list[float]]
    core_deviation: dict[str, list[float]]
    table_note: str | None = None

    @property
    def norms_by_type(self) -> dict[str, list[float]]:
        """‖ΔW(λ)‖_F of all modules of one type (q_proj, …) taken together."""
        return self._aggregate(module_type)

    @property
    def norms_by_layer(self) -> dict[str, list[float]]:
        """‖ΔW(λ)‖_F of all modules of one layer taken together, layers in order ("other": no layer index)."""
        return self._aggregate(layer_label)

    @property
    def total_norms(self) -> list[float]:
        return self._aggregate(lambda name: "all").get("all", [])

    @property
    def effective_rank_by_type(self) -> dict[str, list[float]]:
        """Mean effective rank of ΔW(λ) over the modules of each type."""
        groups = _group(self.module_effective_ranks, module_type)
        return {kind: [sum(column) / len(column) for column in zip(*rows)] for kind, rows in groups.items()}

    def _aggregate(self, key) -> dict[str, list[float]]:
        # Frobenius norm of the modules stacked: the root of the summed squares
        groups = _group(self.module_norms, key)
        return {label: [math.hypot(*column) for column in zip(*rows)] for label, rows in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        if self.trainable_parameters:
            fields["hypernetwork_share"] = (self.shared_parameters or 0) / self.trainable_parameters
        fields.update(
            total_norms=self.total_norms,
            norms_by_type=self.norms_by_type,
            norms_by_layer=self.norms_by_layer,
            effective_rank_by_type=self.effective_rank_by_type,
        )
        return fields


def module_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def layer_label(name: str) -> str:
    """The first all-digit component of a module name (its block index), or "other"."""
    return next((part for part in name.split(".") if part.isdigit()), "other")


def _group(values: dict[str, list[float]], key) -> dict[str, list[list[float]]]:
    groups: dict[str, list[list[float]]] = {}
    for name, row in values.items():
        groups.setdefault(key(name), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: _label_order(item[0])))


def _label_order(label: str) -> tuple[bool, int]:
    """Layers in numeric order ("10" after "2"); other labels after them, in first-seen order (the sort is stable)."""
    return (not label.isdigit(), int(label) if label.isdigit() else 0)


def summarize(parts: AdapterParts, levels: int = 11, source: str = "") -> AdapterSummary:
    """The per-λ report of an adapter on an even grid of `levels` noise levels from 0 to 1."""
    grid = torch.linspace(0.0, 1.0, levels, dtype=torch.float64).tolist()
    norms, ranks, note = update_spectra(parts, grid)
    return AdapterSummary(
        source=source,
        method=parts.method.name,
        base_model=parts.record.get("base_model"),
        settings=parts.config.to_dict(),
        noise_dependent=parts.method.noise_dependent,
        stored_values=parts.stored_values,
        trainable_parameters=parts.trainable_parameters,
        shared_parameters=parts.shared_parameters,
        base_parameters=parts.base_parameters,
        levels=grid,
        module_norms=norms,
        module_effective_ranks=ranks,
        core_deviation=core_deviations(parts.router, grid),
        table_note=note,
    )


def update_spectra(parts: AdapterParts, grid: list[float]):
    """‖ΔW(λ)‖_F and effective rank per module and λ, or why there is no such table.

    Returns:
        ({module: norms}, {module: effective ranks}, note); the dicts are empty when the note is set.
    """
    name = parts.method.name
    if not parts.method.mergeable:
        return {}, {}, f"{name} adapters have no weight update ΔW to tabulate ({parts.method.summary})"
    if not parts.layers:
        return {}, {}, f"the {name} layers cannot be rebuilt from the file alone; pass --model for the per-λ table"
    dense = [layer for layer in parts.layers.values() if getattr(layer, "low_rank_factors", None) is None]
    if dense and not parts.has_base_weights:  # only the low-rank route is sure not to read W0
        return {}, {}, f"a {name} update reads the base weights, which the adapter file lacks; pass --model"
    norms: dict[str, list[float]] = {}
    ranks: dict[str, list[float]] = {}
    for module, layer in parts.layers.items():
        if parts.method.noise_dependent:
            spectra = [singular_values(layer, level) for level in grid]
        else:  # the update is the same at every λ: compute it once
            spectra = [singular_values(layer, None)] * len(grid)
        norms[module] = [spectrum.square().sum().sqrt().item() for spectrum in spectra]
        ranks[module] = [effective_rank(spectrum) for spectrum in spectra]
    return norms, ranks, None
