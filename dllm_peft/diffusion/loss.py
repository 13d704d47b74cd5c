"""The masked-diffusion SFT loss of LLaDA, with λ routed to noise-aware adapters.

For each example: mask k of its L response tokens (`schedule.forward_process`), predict them all in one forward
pass at noise level λ = k / L, and score

    loss_b = Σ_{masked i} CE_i / λ_b / L_b

then average over the batch. The 1/λ weight makes this the (per-token normalised) ELBO of masked diffusion.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..models.backbone import Backbone
from .conditioning import noise_level as routed_noise_level
from .schedule import draw_mask_counts, forward_process


@dataclasses.dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # () mean over the batch
    per_example: torch.Tensor  # (B,)
    noise_level: torch.Tensor  # (B,) λ = k / L
    masked_tokens: int


def masked_diffusion_loss(
    backbone: Backbone,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    mask_counts: torch.Tensor | None = None,
) -> LossOutput:
    """The loss of one batch.

    Args:
        input_ids: (B, T) clean prompt + response tokens.
        response_mask: (B, T) bool, True on the response region (EOS padding included); the prompt is never masked.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (None: all real).
        mask_counts: (B,) tokens to mask per example; drawn as k = max(1, round(t·L)), t ~ U(0, 1), when None.
    """
    # 1. choose how many response tokens to mask, then which ones
    response_lengths = response_mask.sum(dim=1)  # (B,)
    if mask_counts is None:
        mask_counts = draw_mask_counts(response_lengths, generator)
    noised = forward_process(input_ids, response_mask, mask_counts, backbone.mask_id, generator)

    # 2. denoise every masked position in one pass, at each example's own noise level
    with routed_noise_level(backbone.model, noised.noise_level):
        logits = backbone.logits(noised.input_ids, attention_mask, noise_level=noised.noise_level)  # (B, T, V)

    # 3. cross-entropy at the masked positions only (keeps the (N, V) float32 copy small for large vocabularies)
    rows, cols = noised.masked.nonzero(as_tuple=True)  # (N,), (N,)
    token_loss = F.cross_entropy(logits[rows, cols].float(), input_ids[rows, cols], reduction="none")  # (N,)

    # 4. Σ CE / λ / L per example, then the batch mean
    summed = torch.zeros(input_ids.shape[0], device=logits.device).index_add(0, rows, token_loss)  # (B,)
    noise_level = noised.noise_level.to(logits.device)
    per_example = summed / noise_level / response_lengths.clamp(min=1).to(logits.device)
    return LossOutput(per_example.mean(), per_example.detach(), noised.noise_level, int(rows.numel()))
