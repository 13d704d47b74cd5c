"""The forward process of masked diffusion, defined once and reused by the loss, validation and the likelihood.

The noise level λ of a sequence is the fraction of its response region that is masked: λ = k / L for k masked
tokens out of L response tokens. Training draws t ~ U(0, 1] per example and masks exactly k = ⌈t·L⌉ response tokens,
so k is uniform on {1, …, L}: every λ = k / L, the fully masked state the sampler starts from included, is equally
likely (as the NaRA reference's ceil(t·L) and LLaDA's likelihood estimator). The λ routed to noise-aware adapters
is k / L (`--noise-draw grid`) or the draw t itself (`continuous`, as the reference; see docs/noise-level.md). With that draw the loss weight L / k =
1 / λ makes the loss the ELBO of masked diffusion (`loss.py`); an exact k ≥ 1 is both the value fed to NaRA and a safe
weight (the reference divides by t with no floor). Prompt tokens are never masked.

Every random draw accepts either one generator for the batch or one generator per sequence; with one per sequence a
sequence's mask does not depend on the batch it sits in (validation uses this: its figures do not depend on
`--batch-size`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .unmasking import transfer_schedule

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass(frozen=True)
class NoisedBatch:
    input_ids: torch.Tensor  # (B, T) with mask ids at the masked positions
    masked: torch.Tensor  # (B, T) bool, True where a response token was replaced by the mask id
    noise_level: torch.Tensor  # (B,) float32, λ = k / L
    response_lengths: torch.Tensor  # (B,) long, L


def uniform(shape: tuple[int, ...], generator: Generators, device: torch.device | str) -> torch.Tensor:
    """U[0, 1) float32 of `shape` = (B, ...): from one generator, or row b from generator b. Returns `shape`."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for {shape[0]} sequences; pass one per sequence")
    return torch.stack([torch.rand(shape[1:], generator=g, device=device) for g in generators])


def draw_noise(response_lengths: torch.Tensor, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U(0, 1] and k = ⌈t · L⌉, one per example: k is uniform on {1, …, L}. Returns t (B,) float32, k (B,) long.

    Under `--noise-draw continuous` t itself is the λ routed to the adapter (as the NaRA reference feeds its draw);
    under `grid` the routed λ is k / L.
    """
    t = 1.0 - uniform(tuple(response_lengths.shape), generator, response_lengths.device)  # (B,) in (0, 1]
    counts = torch.ceil(t * response_lengths).long()
    return t, torch.minimum(counts.clamp(min=1), response_lengths)


def draw_mask_counts(response_lengths: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """k = ⌈t · L⌉ with t ~ U(0, 1], one per example: k is uniform on {1, …, L}. Returns (B,) long."""
    return draw_noise(response_lengths, generator)[1]


def mask_counts_at(noise_level: float, response_lengths: torch.Tensor) -> torch.Tensor:
    """k for a fixed λ (validation at fixed noise levels): max(1, round(λ · L)). Returns (B,) long.

    The λ actually routed is k / L, which differs from `noise_level` when L is small; callers report k / L.
    """
    counts = torch.round(noise_level * response_lengths.float()).long()
    return torch.minimum(counts.clamp(min=1), response_lengths)


def noise_level_grid(response_length: int) -> set[float]:
    """Every λ a response region of L tokens can route: {k / L : 1 ≤ k ≤ L}, as floats rounded to 1e-9."""
    return {round(k / response_length, 9) for k in range(1, response_length + 1)}


def covers(training_lengths: Sequence[int], sampler_levels: Sequence[float]) -> list[float]:
    """The sampler λ values that no training response length routes (empty when training covers them all)."""
    routed = set().union(*(noise_level_grid(length) for length in set(training_lengths)))
    return sorted({round(level, 9) for level in sampler_levels if level > 0} - routed)


def sampler_noise_levels(gen_length: int, block_length: int, steps: int) -> list[float]:
    """The λ values LLaDA's fixed schedule routes on a canvas of `gen_length` masks (λ > 0 before every step).

    Blocks are decoded left to right, `steps / blocks` steps each, committing the block's tokens spread evenly
    (`unmasking.transfer_schedule`), so λ before a step is (masks left in the canvas) / gen_length.
    """
    blocks = gen_length // block_length
    per_block = steps // blocks
    commits = transfer_schedule(block_length, per_block)
    levels, remaining = [], gen_length
    for _ in range(blocks):
        for count in commits:
            levels.append(remaining / gen_length)
            remaining -= count
    return levels


def forward_process(
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    mask_counts: torch.Tensor,
    mask_id: int,
    generator: Generators = None,
) -> NoisedBatch:
    """Mask exactly `mask_counts[b]` response tokens of each sequence, chosen uniformly at random.

    Args:
        input_ids: (B, T) clean tokens.
        response_mask: (B, T) bool, True on the response region (EOS padding included).
        mask_counts: (B,) how many response tokens to mask, 1 ≤ k ≤ L.
        generator: one for the batch, or one per sequence.
    """
    response_lengths = response_mask.sum(dim=1)  # (B,)
    scores = uniform(tuple(input_ids.shape), generator, input_ids.device)  # (B, T)
    scores = scores.masked_fill(~response_mask, 2.0)  # prompt and padding sort last
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, T) rank of each position's score
    masked = (ranks < mask_counts[:, None]) & response_mask
    noised = input_ids.masked_fill(masked, mask_id)
    noise_level = mask_counts.float() / response_lengths.clamp(min=1).float()
    return NoisedBatch(noised, masked, noise_level, response_lengths)
