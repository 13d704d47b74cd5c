"""The method registry: every adapter method, registered once, by name.

The CLI's `--method` choices, the `"method"` field of adapter files, `merge`, `inspect` and the test conformance
matrix all read `METHODS`, so adding a method here is the whole of wiring it in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..errors import DllmPeftError
from .base import AdapterLayer, MethodConfig, ModelAdapter
from .bitfit import BitFitConfig, BitFitLayer
from .dora import DoraConfig, DoraLayer, NaraDoraConfig, NaraDoraLayer
from .full import FullConfig, FullFineTuning
from .hira import HiraConfig, HiraLayer
from .houlsby import HoulsbyConfig, HoulsbyLayer
from .lora import LoraConfig, LoraLayer
from .multilora import MultiLoraConfig, MultiLoraLayer
from .nara import NaraCConfig, NaraConfig, NaraLayer
from .prefix import PrefixTuning, PrefixTuningConfig
from .prompt import PromptTuning, PromptTuningConfig, PTuning, PTuningConfig
from .router import TrajectoryRouterAdapter, TrajectoryRouterConfig
from .trajectory import TrajectoryAdapter, TrajectoryConfig, trajectory_regularization


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered adapter method."""

    name: str
    config_class: type[MethodConfig]
    # An AdapterLayer subclass wraps each target linear; a ModelAdapter subclass acts on the model as a whole.
    layer_class: type[AdapterLayer | ModelAdapter]
    mergeable: bool  # its update can be folded into the base weights (at a chosen λ if noise_dependent)
    noise_dependent: bool  # its update changes with the noise level λ
    summary: str
    starts_as_base: bool = True  # a fresh adapter leaves the model's outputs exactly unchanged
    # A term the training loop adds to the loss: `loss = loss + method.regularization(model)` when not None.
    regularization: Callable[[nn.Module], torch.Tensor] | None = None


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("lora", LoraConfig, LoraLayer, True, False, "static low-rank update B·A"),
        Method("nara", NaraConfig, NaraLayer, True, True, "B·C(λ)·A with a noise-conditioned core"),
        Method("nara-c", NaraCConfig, NaraLayer, True, False, "B·C·A with a learned constant core (ablation)"),
        Method("dora", DoraConfig, DoraLayer, True, False, "learned magnitude times the LoRA-updated direction"),
        Method("nara-dora", NaraDoraConfig, NaraDoraLayer, True, True, "DoRA whose direction update is B·C(λ)·A"),
        Method("hira", HiraConfig, HiraLayer, True, False, "high-rank Hadamard update W0 ⊙ (B·A)"),
        Method("multilora", MultiLoraConfig, MultiLoraLayer, True, True, "K LoRAs, bin ceil(λ·K) picks one"),
        # Virtual tokens cannot start as the base: attention sees their extra positions from step 0.
        Method("prompt", PromptTuningConfig, PromptTuning, False, False, "learned virtual input tokens", False),
        Method("p-tuning", PTuningConfig, PTuning, False, False, "virtual tokens from an MLP prompt encoder", False),
        Method("prefix", PrefixTuningConfig, PrefixTuning, False, False, "learned key/value prefix per layer", False),
        Method("houlsby", HoulsbyConfig, HoulsbyLayer, False, False, "bottleneck adapters after attention and MLP"),
        Method("bitfit", BitFitConfig, BitFitLayer, False, False, "bias shifts only; LLaDA has no bias to merge into"),
        Method("full", FullConfig, FullFineTuning, False, False, "every weight trains; the file is the whole model"),
        Method(
            "trajectory", TrajectoryConfig, TrajectoryAdapter, False, True,
            "LoRA-Diffusion: low-rank residual on the head's input, rank and scale by third of λ",
            regularization=trajectory_regularization,
        ),
        Method(
            "trajectory-router", TrajectoryRouterConfig, TrajectoryRouterAdapter, False, True,
            "trained trajectory adapters mixed by a learned task router",
            regularization=trajectory_regularization,
        ),
    )
}


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name is an error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise DllmPeftError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


def build_adapter_config(method: str, **settings) -> MethodConfig:
    """The method's config from `settings`, ignoring those the method does not have (e.g. eta for LoRA)."""
    config_class = get_method(method).config_class
    known = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{key: value for key, value in settings.items() if key in known and value is not None})

