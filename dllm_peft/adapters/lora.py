"""LoRA (Hu et al., 2021): a static low-rank update ΔW = s · B A, the baseline every other method is measured against.

A (r × in) starts Kaiming-uniform (a = √5), B (out × r) starts at zero, so a fresh adapter leaves the model unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterConfig, AdapterLayer


@dataclasses.dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    method = "lora"


class LoraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear, config: AdapterConfig, name: str, router=None):
        super().__init__(base_layer, config, name, router)
        self.lora_A = nn.Parameter(torch.empty(config.rank, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def project_down(self, x: torch.Tensor) -> torch.Tensor:
        """A · dropout(x): (..., in) → (..., r), computed in the adapter's dtype."""
        # F.linear, not `x @ A.T`: one fused op whose backward is two plain matrix products (no transposed views).
        return F.linear(self.adapter_dropout(x).to(self.lora_A.dtype), self.lora_A)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(self.project_down(x), self.lora_B)  # (..., out)
        # The default scale 1 costs a full-size multiply forward and backward; skipping it changes no bit.
        return update if self.config.scale == 1.0 else self.config.scale * update

    def low_rank_factors(self, noise_level: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔW as a product `left @ right` that merge, export and inspect use without forming it densely.

        Subclasses whose update is not such a product (e.g. a magnitude-rescaled one) must override this or set it
        to None; a conformance test checks `left @ right == delta_weight` for every registered method.

        Returns:
            left (out, r) = s · B and right (r, in) = A.
        """
        return self.config.scale * self.lora_B, self.lora_A

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        left, right = self.low_rank_factors(noise_level)
        return left @ right  # (out, in)
