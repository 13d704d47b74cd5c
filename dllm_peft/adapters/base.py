"""The adapter framework: config base classes, the layer that wraps a linear layer, the adapter that acts on the
model as a whole, and inject / unload.

Wrap, don't subclass (as PEFT's tuners do): an adapter layer keeps the original `nn.Linear` as `base_layer` and adds
a method-specific update, so any backbone works. `inject` walks `named_modules()`, swaps each target linear for its
wrapper and freezes everything else; `unload` puts the original module objects back, so the base is restored bit
for bit. Adapter parameters are found by module type (`AdapterLayer`) and by the shared `NoiseRouter`, never by name.

Methods that do not wrap linear layers (prompt and prefix tuning, full fine-tuning, LoRA-Diffusion's trajectory
adapter) subclass `ModelAdapter` instead: one module registered on the model root (attribute `dllm_peft_adapter`)
that installs forward hooks in `attach` and removes them in `detach`. The same `inject` / `unload` /
`adapter_state_dict` entry points serve both kinds, chosen by the class the registry names.

Target matching (the fix for PEFT silently ignoring typos): a target matches a module whose full name equals it,
ends with "." + target, or fully matches it as a regular expression. A target that matches no linear layer is an
error listing the model's linear-layer names. The LM head is adapted only when a target names it beyond its last
component (LLaDA's head `model.transformer.ff_out` shares the suffix `ff_out` with every block's MLP projection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ..diffusion.conditioning import ROUTER_ATTRIBUTE, NoiseRouter, find_router
from ..errors import DllmPeftError
from ..models.targets import linear_layer_names, output_head_name, resolve_targets  # noqa: F401  (re-exported)

CONFIG_ATTRIBUTE = "dllm_peft_config"
_FROZEN_FLAGS_ATTRIBUTE = "_dllm_peft_requires_grad"


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """What every method's config shares: its registered name and a JSON round trip. Methods subclass it."""

    method: ClassVar[str] = ""
    # The method's own default targets when they are not the backbone's list (e.g. Houlsby: the output projections).
    default_targets: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {"method": self.method, **{k: _lists(v) for k, v in fields.items()}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"method"})
        if unknown:
            raise DllmPeftError(f"{cls.method} adapters have no setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: _tuples(v) for k, v in values.items() if k in known})


def check_target_modules(config: MethodConfig) -> None:
    """Store `config.target_modules` as a tuple and refuse an empty list (for configs of linear-layer methods)."""
    if config.target_modules is not None:
        object.__setattr__(config, "target_modules", tuple(config.target_modules))
        if not config.target_modules:
            raise DllmPeftError("target_modules is empty; name at least one linear layer or leave it unset")


TARGET_MODULES_HELP = "Linear layers to adapt (name suffixes or regexes); default: the backbone's own list."


@dataclasses.dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """Fields shared by the low-rank family. Each method subclasses it and sets `method`."""

    rank: int = dataclasses.field(default=32, metadata={"help": "Rank r of the low-rank update."})
    scale: float = dataclasses.field(default=1.0, metadata={"help": "Scale s of the update (PEFT's alpha / r)."})
    dropout: float = dataclasses.field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    target_modules: tuple[str, ...] | None = dataclasses.field(default=None, metadata={"help": TARGET_MODULES_HELP})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise DllmPeftError(f"rank must be a positive integer, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise DllmPeftError(f"dropout must lie in [0, 1), got {self.dropout}")
        check_target_modules(self)


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class AdapterLayer(nn.Module):
    """A linear layer plus a trainable update: `y = base_layer(x) + delta(x)`.

    Subclasses implement `delta`, `delta_weight` (the dense update ΔW at a noise level, for merge and inspect) and
    optionally `build_shared` (modules every layer shares through the router, e.g. NaRA's hypernetwork). A layer that
    reads λ without sharing a module (Multi-LoRA) sets `needs_noise_level`, so that `inject` installs a router.
    """

    needs_noise_level: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Linear, config: MethodConfig, name: str, router: NoiseRouter | None):
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.module_name = name
        # A plain attribute, not a submodule: the router is registered once, on the model root.
        object.__setattr__(self, "router", router)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        dropout = getattr(config, "dropout", 0.0)  # methods without an input projection (BitFit) have none
        self.adapter_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def build_shared(cls, config: AdapterConfig, module_names: list[str]) -> dict[str, nn.Module]:
        """Modules shared by all adapted layers, registered in the router (none for plain LoRA)."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.delta(x).to(x.dtype)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        """ΔW of shape (out_features, in_features) at `noise_level` (ignored by noise-agnostic methods)."""
        raise NotImplementedError

    def adapter_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        """(name, tensor) for every adapter-owned parameter and buffer, the wrapped base layer excluded."""
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            if not name.startswith("base_layer."):
                yield name, tensor


class ModelAdapter(nn.Module):
    """An adapter that acts on the model as a whole (through forward hooks) instead of wrapping linear layers.

    `inject` builds it after freezing the model, registers it on the model root as `dllm_peft_adapter` (so its
    parameters move and train with the model) and calls `attach`; `unload` calls `detach` and removes it. λ, when
    `needs_noise_level` is set, comes from the router as for layers: `self.router.noise_level(batch_size)`.
    """

    needs_noise_level: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: MethodConfig, router: NoiseRouter | None):
        super().__init__()
        self.config = config
        object.__setattr__(self, "router", router)  # registered once, on the model root
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: nn.Module) -> list[str]:
        """Install the hooks on `model`. Returns the names of the modules the adapter acts on."""
        raise NotImplementedError

    def detach(self, model: nn.Module) -> None:
        """Remove what `attach` installed; subclasses that change the model in place undo that too."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def adapter_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        """(name from the model root, tensor) for every adapter-owned parameter and buffer."""
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            yield f"{ADAPTER_ATTRIBUTE}.{name}", tensor


ADAPTER_ATTRIBUTE = "dllm_peft_adapter"


def find_model_adapter(model: nn.Module) -> ModelAdapter | None:
    adapter = getattr(model, ADAPTER_ATTRIBUTE, None)
    return adapter if isinstance(adapter, ModelAdapter) else None


# -- inject / unload ----------------------------------------------------------------------------------------------
def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def inject(
    model: nn.Module,
    config: MethodConfig,
    layer_class: type[AdapterLayer | ModelAdapter],
    default_targets: Iterable[str] = (),
) -> list[str]:
    """Add the adapter of `config` to `model` in place and freeze everything but the adapter.

    Args:
        layer_class: an `AdapterLayer` subclass (wraps each target linear) or a `ModelAdapter` subclass.
        default_targets: the backbone's target list, used when neither the config nor the method names targets.
    Returns:
        The full names of the adapted modules.
    """
    if carries_adapter(model):
        raise DllmPeftError("this model already carries an adapter; unload it before injecting another")
    acts_on_model = issubclass(layer_class, ModelAdapter)
    names: list[str] = []
    if not acts_on_model:
        targets = config.target_modules or config.default_targets or tuple(default_targets)
        if not targets:
            raise DllmPeftError("no target modules given and the backbone has no default; pass --targets")
        names = resolve_targets(model, targets)  # fails before the model is touched
    setattr(model, _FROZEN_FLAGS_ATTRIBUTE, {n: p.requires_grad for n, p in model.named_parameters()})
    model.requires_grad_(False)
    object.__setattr__(model, CONFIG_ATTRIBUTE, config)
    try:
        shared = {} if acts_on_model else layer_class.build_shared(config, names)
        router = _install_router(model, shared, layer_class.needs_noise_level)
        if acts_on_model:
            adapter = layer_class(model, config, router)
            model.add_module(ADAPTER_ATTRIBUTE, adapter.to(_device_of(model)).train(model.training))
            return adapter.attach(model)
        for name in names:
            parent, child = _parent(model, name)
            base = getattr(parent, child)
            layer = layer_class(base, config, name, router)
            layer.to(device=base.weight.device).train(model.training)  # dropout follows the model's mode
            setattr(parent, child, layer)
        return names
    except BaseException:
        unload(model)  # a failed injection leaves the model as it was
        raise


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _install_router(model: nn.Module, shared: dict[str, nn.Module], needs_noise_level: bool) -> NoiseRouter | None:
    """Register a router on the model root when the adapter shares modules or reads λ; None otherwise."""
    if not shared and not needs_noise_level:
        return None
    router = NoiseRouter()
    for key, module in shared.items():
        router.shared[key] = module
    model.add_module(ROUTER_ATTRIBUTE, router.to(_device_of(model)))
    return router


def carries_adapter(model: nn.Module) -> bool:
    return bool(adapter_layers(model)) or find_router(model) is not None or find_model_adapter(model) is not None


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def adapter_config(model: nn.Module) -> MethodConfig | None:
    return getattr(model, CONFIG_ATTRIBUTE, None)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (parameters and buffers, the router's included), keyed by its full name."""
    state: dict[str, torch.Tensor] = {}
    for module_name, layer in adapter_layers(model).items():
        for name, tensor in layer.adapter_parameters():
            state[f"{module_name}.{name}"] = tensor
    router = find_router(model)
    if router is not None:
        for name, tensor in [*router.named_parameters(), *router.named_buffers()]:
            state[f"{ROUTER_ATTRIBUTE}.{name}"] = tensor
    model_adapter = find_model_adapter(model)
    if model_adapter is not None:
        state.update(model_adapter.adapter_parameters())
    return state


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter: the original module objects and their requires_grad flags come back untouched."""
    for name, layer in adapter_layers(model).items():
        parent, child = _parent(model, name)
        setattr(parent, child, layer.base_layer)
    model_adapter = find_model_adapter(model)
    if model_adapter is not None:
        model_adapter.detach(model)
        delattr(model, ADAPTER_ATTRIBUTE)
    if find_router(model) is not None:
        delattr(model, ROUTER_ATTRIBUTE)
    flags = getattr(model, _FROZEN_FLAGS_ATTRIBUTE, None)
    if flags is not None:
        for name, param in model.named_parameters():
            param.requires_grad_(flags.get(name, param.requires_grad))
        delattr(model, _FROZEN_FLAGS_ATTRIBUTE)
    if hasattr(model, CONFIG_ATTRIBUTE):
        object.__delattr__(model, CONFIG_ATTRIBUTE)
    return model
