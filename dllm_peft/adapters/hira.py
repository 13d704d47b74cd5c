"""HiRA (Huang et al., ICLR 2025): a high-rank update through the Hadamard product with the frozen weight.

    ΔW = s · W0 ⊙ (B A)

B A has rank r, but its element-wise product with W0 generally has full rank, at LoRA's parameter count. A is
Kaiming-uniform and B starts at zero (as in LoRA), so a fresh adapter is a no-op. The update is formed densely in every
forward, as the HiRA reference does (the alternative, r masked copies of W0 x, costs r base matmuls); it merges
exactly, and since it is not a product of two thin factors it offers no `low_rank_factors`.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import AdapterConfig
from .lora import LoraLayer


@dataclasses.dataclass(frozen=True)
class HiraConfig(AdapterConfig):
    method = "hira"


class HiraLayer(LoraLayer):
    low_rank_factors = None  # W0 ⊙ (B A) is high-rank by design

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        update = self.delta_weight()  # (out, in)
        return self.adapter_dropout(x).to(update.dtype) @ update.T  # (..., out)

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        low_rank = self.lora_B @ self.lora_A  # (out, in)
        return self.config.scale * self.base_layer.weight.to(low_rank.dtype) * low_rank
