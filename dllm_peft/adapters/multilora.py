"""Multi-LoRA, the NaRA paper's noise-binned baseline: K independent LoRAs, one per band of noise levels.

The LoRA used at noise level λ is bin k = ceil(λ·K) (1-based; λ = 0 falls in bin 1), chosen per sample, the same rule
in training and sampling (`method-facts.md`). λ comes from the router as for NaRA, so the loss, the sampler and the
likelihood need nothing special. Each bin is a plain LoRA (A Kaiming-uniform, B zero), so a fresh adapter is a no-op,
and at a fixed λ the adapter *is* that bin's LoRA: it merges and exports at a chosen λ.

`noise_bins` is also LoRA-Diffusion's phase rule (K = 3: late, middle, early thirds of the trajectory).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..diffusion.conditioning import as_noise_level
from ..errors import DllmPeftError
from .base import AdapterConfig, AdapterLayer

# λ·K that should be a whole number (0.3·10) can land a hair above it in float32; without this tolerance such a λ
# would jump to the next bin.
BIN_TOLERANCE = 1e-6


def noise_bins(noise_level: torch.Tensor, bins: int) -> torch.Tensor:
    """0-based bin index ceil(λ·K) − 1 per sample, with λ = 0 in the first bin.

    Args:
        noise_level: (B,) λ in [0, 1].
    Returns:
        (B,) long in [0, bins).
    """
    index = torch.ceil(noise_level.double() * bins - BIN_TOLERANCE).long()  # (B,) 1-based, 0 for λ = 0
    return index.clamp(min=1, max=bins) - 1


@dataclasses.dataclass(frozen=True)
class MultiLoraConfig(AdapterConfig):
    method = "multilora"

    bins: int = dataclasses.field(default=4, metadata={"help": "Number K of LoRAs, one per band of noise levels."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bins < 1:
            raise DllmPeftError(f"bins must be a positive integer, got {self.bins}")


class MultiLoraLayer(AdapterLayer):
    """y = W0 x + s · B_k (A_k x) with k = ceil(λ·K) per sample."""

    needs_noise_level = True

    def __init__(self, base_layer: nn.Linear, config: MultiLoraConfig, name: str, router):
        super().__init__(base_layer, config, name, router)
        self.lora_A = nn.Parameter(torch.empty(config.bins, config.rank, self.in_features))  # (K, r, in)
        self.lora_B = nn.Parameter(torch.zeros(config.bins, self.out_features, config.rank))  # (K, out, r)
        for down in self.lora_A:
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # each bin initialised as a LoRA's A

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        bins = noise_bins(self.router.noise_level(x.shape[0]), self.config.bins).to(x.device)  # (B or 1,)
        down_weights, up_weights = self.lora_A[bins], self.lora_B[bins]  # (B, r, in), (B, out, r)
        flat = self.adapter_dropout(x).to(self.lora_A.dtype).reshape(x.shape[0], -1, x.shape[-1])  # (B, N, in)
        down = flat @ down_weights.transpose(1, 2)  # (B, N, r)
        up = down @ up_weights.transpose(1, 2)  # (B, N, out)
        return self.config.scale * up.reshape(*x.shape[:-1], self.out_features)

    def low_rank_factors(self, noise_level: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The LoRA of λ's bin: left (out, r) = s · B_k, right (r, in) = A_k."""
        if noise_level is None:
            raise DllmPeftError("a Multi-LoRA update depends on the noise level (one LoRA per bin); choose λ")
        bin_index = int(noise_bins(as_noise_level(noise_level), self.config.bins)[0])
        return self.config.scale * self.lora_B[bin_index], self.lora_A[bin_index]

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        left, right = self.low_rank_factors(noise_level)
        return left @ right  # (out, in)
