"""DoRA (Liu et al., 2024, arXiv 2402.09353) and NaRA-DoRA (the NaRA paper's Appendix M variant).

DoRA splits the adapted weight into a learned magnitude m (one per output row) and a direction that LoRA updates:

    W' = m ⊙ (W0 + ΔW) / ‖W0 + ΔW‖_row,    m initialised to ‖W0‖_row,

with ΔW = s · B A (DoRA) or ΔW(λ) = s · B · C(λ) · A (NaRA-DoRA: NaRA's noise-conditioned core inside the direction
update; the magnitude stays static). As in DoRA §4.3 and PEFT, the row norm is treated as a constant during
backpropagation, and the forward is computed without forming W':

    y = base(x) + (m / n − 1) ⊙ (W0 x) + (m / n) ⊙ ΔW x,    n = ‖W0 + ΔW‖_row (per sample for NaRA-DoRA).

n is computed from r × r quantities (no (out, in) matrix per sample): with P = W0 Aᵀ (out, r), G = A Aᵀ (r, r) and
M = s · B · C (out, r), n² = ‖W0‖²_row + 2 Σ_j (M ⊙ P)_j + Σ_j (M G ⊙ M)_j. A fresh adapter has B = 0, so m / n is
exactly 1 and the layer is exactly the base layer. The merged weight is not W0 + ΔW, so `delta_weight` returns
W' − W0 (merge stays `W0 + delta_weight`), and there are no low-rank factors.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..diffusion.conditioning import as_noise_level
from ..errors import DllmPeftError
from .base import AdapterConfig
from .lora import LoraLayer
from .nara import NaraConfig, SharedCoreMixin


@dataclasses.dataclass(frozen=True)
class DoraConfig(AdapterConfig):
    method = "dora"


@dataclasses.dataclass(frozen=True)
class NaraDoraConfig(NaraConfig):
    method = "nara-dora"


def row_norms(base_weight: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """‖W0 + M A‖ of every output row, in float32, without forming the sum.

    Args:
        base_weight: (out, in) W0.
        factors: (M (B or 1, out, r), A (r, in)), or None for ΔW = 0.
    Returns:
        (B or 1, out).
    """
    weight = base_weight.float()
    squared = weight.square().sum(dim=1)[None]  # (1, out)
    if factors is not None:
        left, right = factors[0].float(), factors[1].float()
        projected = weight @ right.T  # (out, r): P = W0 Aᵀ
        gram = right @ right.T  # (r, r): G = A Aᵀ
        cross = (left * projected).sum(dim=-1)  # (B, out)
        own = ((left @ gram) * left).sum(dim=-1)  # (B, out)
        squared = squared + 2 * cross + own
    return squared.clamp(min=0).sqrt()


class DoraLayer(LoraLayer):
    """y = (m / n) ⊙ ((W0 + ΔW) x) + bias, with n = ‖W0 + ΔW‖_row held constant in backpropagation."""

    low_rank_factors = None  # the merged update is rescaled per row, not a product of two thin factors

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig, name: str, router=None):
        super().__init__(base_layer, config, name, router)
        with torch.no_grad():
            self.magnitude = nn.Parameter(row_norms(base_layer.weight, None)[0])  # (out,)

    def core(self, batch_size: int) -> torch.Tensor | None:
        """The r × r core between B and A for this forward, (B or 1, r, r); None for plain DoRA (C = I)."""
        return None

    def up_factor(self, core: torch.Tensor | None) -> torch.Tensor:
        """M = s · B · C: (out, r) without a core, else (B or 1, out, r)."""
        up = self.config.scale * self.lora_B
        return up if core is None else up @ core.to(up.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_output = self.base_layer(x)  # (B, ..., out)
        core = self.core(x.shape[0])
        up = self.up_factor(core)  # (out, r) or (B, out, r)
        with torch.no_grad():  # DoRA §4.3: the norm is a constant for the gradient
            norms = row_norms(self.base_layer.weight, (up if up.dim() == 3 else up[None], self.lora_A))  # (B|1, out)
        ratio = self.magnitude / norms  # (B or 1, out)
        ratio = ratio.reshape(ratio.shape[0], *[1] * (x.dim() - 2), -1)  # broadcasts over the token dimensions
        down = self.project_down(x)  # (B, ..., r)
        if up.dim() == 3:
            flat = down.reshape(down.shape[0], -1, down.shape[-1])  # (B, N, r)
            update = (flat @ up.transpose(1, 2)).reshape(*down.shape[:-1], -1)  # (B, ..., out)
        else:
            update = down @ up.T  # (B, ..., out)
        bias = self.base_layer.bias
        unbiased = base_output if bias is None else base_output - bias  # W0 x
        return base_output + ((ratio - 1) * unbiased + ratio * update).to(x.dtype)

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        """W' − W0 = (m / n) ⊙ (W0 + ΔW) − W0 at `noise_level`: (out, in)."""
        core = self.core_at(noise_level)
        up = self.up_factor(core)
        up = up if up.dim() == 3 else up[None]  # (1, out, r)
        base = self.base_layer.weight.float()
        norms = row_norms(base, (up, self.lora_A))[0]  # (out,)
        adapted = base + (up[0] @ self.lora_A).float()  # (out, in)
        return (self.magnitude.float() / norms)[:, None] * adapted - base

    def core_at(self, noise_level: float | None) -> torch.Tensor | None:
        """The core at a fixed λ, (1, r, r), for merge and inspect; None for plain DoRA."""
        return None


class NaraDoraLayer(SharedCoreMixin, DoraLayer):
    """DoRA whose direction update is NaRA's B · C(λ) · A, with C read from the router per sample."""

    def core_at(self, noise_level: float | None) -> torch.Tensor:
        module = self.router.shared[self.core_key]
        if module.needs_noise_level and noise_level is None:
            raise DllmPeftError("NaRA-DoRA's update depends on the noise level; choose one with --noise-level")
        return module(None if noise_level is None else as_noise_level(noise_level))
