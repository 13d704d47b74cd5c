"""The forward process of masked diffusion, defined once and reused by the loss, validation and the likelihood.

The noise level λ of a sequence is the fraction of its response region that is masked: λ = k / L for k masked
tokens out of L response tokens. Training draws t ~ U(0, 1) per example and masks exactly k = max(1, round(t·L))
response tokens (the NaRA reference masks ceil(t·L) and divides by t with no floor; an exact k with λ = k / L ≥ 1/L
is both the value fed to NaRA and a safe loss weight). Prompt tokens are never masked.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class NoisedBatch:
    input_ids: torch.Tensor  # (B, T) with mask ids at the masked positions
    masked: torch.Tensor  # (B, T) bool, True where a response token was replaced by the mask id
    noise_level: torch.Tensor  # (B,) float32, λ = k / L
    response_lengths: torch.Tensor  # (B,) long, L


def draw_mask_counts(response_lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """k = max(1, round(t · L)) with t ~ U(0, 1), one per example. Returns (B,) long."""
    t = torch.rand(response_lengths.shape, generator=generator, device=response_lengths.device)
    counts = torch.round(t * response_lengths).long()
    return torch.minimum(counts.clamp(min=1), response_lengths)


def mask_counts_at(noise_level: float, response_lengths: torch.Tensor) -> torch.Tensor:
    """k for a fixed λ (validation at fixed noise levels): max(1, round(λ · L)). Returns (B,) long."""
    counts = torch.round(noise_level * response_lengths.float()).long()
    return torch.minimum(counts.clamp(min=1), response_lengths)


def forward_process(
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    mask_counts: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> NoisedBatch:
    """Mask exactly `mask_counts[b]` response tokens of each sequence, chosen uniformly at random.

    Args:
        input_ids: (B, T) clean tokens.
        response_mask: (B, T) bool, True on the response region (EOS padding included).
        mask_counts: (B,) how many response tokens to mask, 1 ≤ k ≤ L.
    """
    response_lengths = response_mask.sum(dim=1)  # (B,)
    scores = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T)
    scores = scores.masked_fill(~response_mask, 2.0)  # prompt and padding sort last
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, T) rank of each position's score
    masked = (ranks < mask_counts[:, None]) & response_mask
    noised = input_ids.masked_fill(masked, mask_id)
    noise_level = mask_counts.float() / response_lengths.clamp(min=1).float()
    return NoisedBatch(noised, masked, noise_level, response_lengths)
