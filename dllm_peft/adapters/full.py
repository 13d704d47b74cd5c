"""Full fine-tuning: every parameter of the backbone trains — the upper reference of both papers' comparisons.

It plugs into the same entry points as the adapters: `inject` makes every base parameter trainable,
`adapter_state_dict` (and so the saved file) holds every one of them under its own name, and `unload` restores the
weights the model had at injection. That last promise needs a copy of the original weights; it is kept on the CPU (a
full fine-tune's optimizer state is already twice the model's size, so the copy is not what limits it). Nothing is
merged: the saved file already is the whole model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from ..diffusion.conditioning import ROUTER_ATTRIBUTE
from .base import ADAPTER_ATTRIBUTE, MethodConfig, ModelAdapter


@dataclasses.dataclass(frozen=True)
class FullConfig(MethodConfig):
    method = "full"


class FullFineTuning(ModelAdapter):
    """Unfreezes the model it is attached to; remembers the original weights so that `detach` can restore them."""

    def __init__(self, model: nn.Module, config: FullConfig, router=None):
        super().__init__(model, config, router)
        object.__setattr__(self, "model", model)  # a plain reference: the model is not a submodule of its adapter
        self._original: dict[str, torch.Tensor] = {}  # a plain dict: never saved, never moved with the model

    def attach(self, model: nn.Module) -> list[str]:
        for name, parameter in self._base_parameters(model):
            self._original[name] = parameter.detach().to("cpu", copy=True)
            parameter.requires_grad_(True)
        return [name for name, module in model.named_modules() if name and not list(module.children())]

    def detach(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, parameter in self._base_parameters(model):
                parameter.copy_(self._original[name])
        self._original.clear()
        super().detach(model)

    def adapter_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Every parameter of the model, under its own name."""
        return self._base_parameters(self.model)

    @staticmethod
    def _base_parameters(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
        for name, parameter in model.named_parameters():
            if not name.startswith((f"{ADAPTER_ATTRIBUTE}.", f"{ROUTER_ATTRIBUTE}.")):
                yield name, parameter
