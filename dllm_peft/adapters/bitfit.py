"""BitFit (Ben Zaken et al., 2022): train only the bias terms.

LLaDA's linear layers have no biases (`include_bias: false`), so BitFit here gives every adapted linear a trainable
bias shift δ that starts at zero: y = W0 x + b0 + δ. On a layer that has a bias this is the same function and the
same gradient as training b0 itself, and it keeps the frozen base bit-for-bit restorable. By default every linear layer
of the backbone is adapted (the LM head excepted, as always). ΔW is zero; the shift is not folded into a merged
checkpoint because a bias-free architecture such as LLaDA's has nowhere to keep it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .base import TARGET_MODULES_HELP, AdapterLayer, MethodConfig, check_target_modules

EVERY_LINEAR = (".*",)


@dataclasses.dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    method = "bitfit"
    default_targets = EVERY_LINEAR

    target_modules: tuple[str, ...] | None = dataclasses.field(
        default=None, metadata={"help": TARGET_MODULES_HELP.replace("the backbone's own list", "every linear layer")}
    )

    def __post_init__(self) -> None:
        check_target_modules(self)


class BitFitLayer(AdapterLayer):
    """y = base_layer(x) + δ, with δ of shape (out,)."""

    def __init__(self, base_layer: nn.Linear, config: BitFitConfig, name: str, router=None):
        super().__init__(base_layer, config, name, router)
        self.bias_shift = nn.Parameter(torch.zeros(self.out_features))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias_shift  # (out,), broadcast over (..., out)

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        return torch.zeros(self.out_features, self.in_features, device=self.bias_shift.device)
