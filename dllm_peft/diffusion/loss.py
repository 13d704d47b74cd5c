"""The masked-diffusion SFT loss of LLaDA, with λ routed to noise-aware adapters.

For each example: mask k of its L response tokens (`schedule.forward_process`), predict them all in one forward
pass at noise level λ = k / L, and score

    loss_b = Σ_{masked i} CE_i / λ_b / L_b

then average over the batch. With k uniform on {1, …, L} (`schedule.draw_mask_counts`), the weight 1/λ = L/k makes
this an unbiased estimate of the per-token normalised ELBO of masked diffusion (LLaDA's SFT loss):

    ELBO_b / L_b = (1 / L_b) Σ_{k=1}^{L_b} (1 / L_b) · (L_b / k) · E[Σ_{masked i} CE_i | k masked]

The weight is always L / k. What the adapter is told differs by `noise_draw`: `grid` routes λ = k / L, `continuous`
routes the draw t with k = ⌈t·L⌉ (the NaRA reference feeds t), so a noise-conditioned module sees a dense λ in (0, 1]
even when L is a few tokens. The weight stays L / k (the ELBO), not the reference's 1 / t.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..config import NOISE_DRAWS
from ..models.backbone import Backbone
from .conditioning import noise_level as routed_noise_level
from .schedule import Generators, draw_noise, forward_process


@dataclasses.dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # () mean over the batch
    per_example: torch.Tensor  # (B,)
    noise_level: torch.Tensor  # (B,) the λ routed to the adapter: k / L (grid) or t (continuous)
    masked_tokens: int


def masked_diffusion_loss(
    backbone: Backbone,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generator: Generators = None,
    mask_counts: torch.Tensor | None = None,
    noise_draw: str = "grid",
    routed_levels: torch.Tensor | None = None,
) -> LossOutput:
    """The loss of one batch.

    Args:
        input_ids: (B, T) clean prompt + response tokens.
        response_mask: (B, T) bool, True on the response region (EOS padding included); the prompt is never masked.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (None: all real).
        generator: one for the batch, or one per example (then an example's mask does not depend on its batch).
        mask_counts: (B,) tokens to mask per example; drawn uniformly on {1, …, L} (k = ⌈t·L⌉) when None.
        noise_draw: the λ routed when k is drawn here: "grid" k / L, "continuous" the draw t.
        routed_levels: (B,) the λ to route with given `mask_counts` (None: k / L).
    """
    if noise_draw not in NOISE_DRAWS:
        raise ValueError(f"noise_draw must be one of {NOISE_DRAWS}, got {noise_draw!r}")
    # 1. choose how many response tokens to mask, then which ones
    response_lengths = response_mask.sum(dim=1)  # (B,)
    if mask_counts is None:
        t, mask_counts = draw_noise(response_lengths, generator)  # (B,), (B,)
        routed_levels = t if noise_draw == "continuous" else None
    noised = forward_process(input_ids, response_mask, mask_counts, backbone.mask_id, generator)
    routed = noised.noise_level if routed_levels is None else routed_levels.float()  # (B,)

    # 2. denoise every masked position in one pass, at each example's own noise level
    with routed_noise_level(backbone.model, routed):
        logits = backbone.logits(noised.input_ids, attention_mask, noise_level=routed)  # (B, T, V)

    # 3. cross-entropy at the masked positions only (keeps the (N, V) float32 copy small for large vocabularies)
    rows, cols = noised.masked.nonzero(as_tuple=True)  # (N,), (N,)
    token_loss = F.cross_entropy(logits[rows, cols].float(), input_ids[rows, cols], reduction="none")  # (N,)

    # 4. Σ CE / λ / L = Σ CE / k per example (λ = k / L here, whatever was routed), then the batch mean
    summed = torch.zeros(input_ids.shape[0], device=logits.device).index_add(0, rows, token_loss)  # (B,)
    per_example = summed / mask_counts.clamp(min=1).to(logits.device)
    return LossOutput(per_example.mean(), per_example.detach(), routed, int(rows.numel()))
