"""Monte-Carlo log-likelihood of an answer under a masked-diffusion model (LLaDA's `get_log_likelihood`).

For a prompt p and an answer a of L tokens, masked diffusion bounds the log-likelihood from below:

    log p(a | p) ≥ E_k E_M [ (L / k) · Σ_{i ∈ M} log p_θ(a_i | p, a with M masked) ],   |M| = k ∈ {1..L}

Each Monte-Carlo sample masks exactly k answer tokens (`schedule.forward_process`, the one masking routine of the
project) and runs at noise level λ = k / L, routed to noise-aware adapters. As in LLaDA's reference, the `mc_num`
values of k are stratified: evenly spaced over {1..L} from one random start, so a few samples already cover every
noise level. The estimate is the mean over the samples.

Two implementations of the same estimator:
- `reference_log_likelihood` scores one request at a time, as LLaDA's function does; it is the yardstick of the tests
  and of `benchmarks/loglikelihood`.
- `log_likelihoods` scores many requests at once. Every request draws exactly the samples the reference draws (its
  own generator, seeded from the seed and its tokens, so order and batching never change a number); identical
  samples of a request are computed once (a one-token answer has a single possible sample), and the remaining rows
  of all requests are packed, sorted by length, into right-padded forward batches of `batch_size` rows.

`greedy_matches` is LLaDA's `suffix_greedy_prediction`: does greedy unmasking reproduce the answer? (lm-eval's
`is_greedy`, needed by a few tasks only.)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..conditioning import noise_level as routed_noise_level
from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .schedule import NoisedBatch, forward_process


@dataclasses.dataclass(frozen=True)
class _Row:
    """One distinct noised copy of a request, waiting for its forward pass."""

    request: int
    slot: int  # index among the request's distinct rows
    clean: torch.Tensor  # (T,) prompt + answer
    masked: torch.Tensor  # (T,) bool, the masked answer positions
    noise_level: float  # λ = k / L


def request_generator(seed: int, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> torch.Generator:
    """The generator of one request: a function of the seed and the tokens only, so batching cannot change it."""
    digest = hashlib.blake2b(repr((seed, list(prompt_ids), list(answer_ids))).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def stratified_mask_counts(answer_length: int, mc_num: int, generator: torch.Generator) -> torch.Tensor:
    """k for each of `mc_num` samples: evenly spaced over 1..L from a random start, wrapped around (LLaDA).

    Returns:
        (mc_num,) long, every value in [1, L].
    """
    start = torch.randint(1, answer_length + 1, (), generator=generator).item()
    spaced = torch.linspace(start, start + (mc_num - 1) * answer_length / mc_num, mc_num, dtype=torch.float64)
    return (torch.round(spaced).long() - 1) % answer_length + 1


def draw_samples(
    prompt_ids: Sequence[int], answer_ids: Sequence[int], mc_num: int, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, NoisedBatch]:
    """The `mc_num` noised copies of prompt + answer that one request is scored on.

    Returns:
        the clean sequence (T,) and the noised batch: input_ids (mc_num, T), masked (mc_num, T), λ (mc_num,).
    """
    if not answer_ids:
        raise DllmPeftError("cannot score an empty answer; the continuation must hold at least one token")
    sequence = torch.tensor([*prompt_ids, *answer_ids], dtype=torch.long)  # (T,)
    response_mask = torch.arange(sequence.numel()) >= len(prompt_ids)  # (T,)
    counts = stratified_mask_counts(len(answer_ids), mc_num, generator)  # (mc_num,)
    noised = forward_process(
        sequence.expand(mc_num, -1), response_mask.expand(mc_num, -1), counts, mask_id, generator
    )
    return sequence, noised


def _weighted_losses(
    backbone: Backbone,
    noised_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    masked: torch.Tensor,
    noise_level: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ over masked positions of cross-entropy, divided by λ, for each row.

    Args:
        noised_ids, clean_ids, masked: (B, T); attention_mask: (B, T) or None.
        noise_level: (B,) λ = k / L.
    Returns:
        (B,) float32.
    """
    device = backbone.device
    with routed_noise_level(backbone.model, noise_level):
        logits = backbone.logits(noised_ids.to(device), None if attention_mask is None else attention_mask.to(device))
    rows, cols = masked.nonzero(as_tuple=True)  # (N,), (N,)
    token_loss = F.cross_entropy(logits[rows, cols].float(), clean_ids[rows, cols].to(device), reduction="none")
    summed = torch.zeros(noised_ids.shape[0], device=device).index_add(0, rows.to(device), token_loss)  # (B,)
    return (summed / noise_level.to(device)).cpu()


@torch.no_grad()
def reference_log_likelihood(
    backbone: Backbone,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> float:
    """log p(answer | prompt) estimated from `mc_num` samples, one request at a time (LLaDA's loop).

    The samples are forwarded in chunks of `batch_size` rows of this request only, without padding.
    """
    generator = request_generator(seed, prompt_ids, answer_ids)
    sequence, noised = draw_samples(prompt_ids, answer_ids, mc_num, backbone.mask_id, generator)
    losses = []
    for start in range(0, mc_num, batch_size):
        chunk = slice(start, start + batch_size)
        clean = sequence.expand(noised.input_ids[chunk].shape[0], -1)
        losses.append(
            _weighted_losses(backbone, noised.input_ids[chunk], clean, noised.masked[chunk], noised.noise_level[chunk])
        )
    return -torch.cat(losses).mean().item()


@torch.no_grad()
def log_likelihoods(
    backbone: Backbone,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    on_rows: Callable[[int, int], None] | None = None,
) -> list[float]:
    """The estimate of `reference_log_likelihood` for many (prompt_ids, answer_ids) requests at once.

    Args:
        batch_size: rows per forward pass; rows of different requests share a pass.
        on_rows: progress, called after each forward pass with (rows in that pass, distinct rows in total).
    Returns:
        one log-likelihood per request, in order.
    """
    # 1. draw each request's samples exactly as the reference does, then keep its distinct rows with their counts
    rows: list[_Row] = []
    weights: list[torch.Tensor] = []  # per request: (U,) share of its mc_num samples each distinct row stands for
    for index, (prompt_ids, answer_ids) in enumerate(requests):
        generator = request_generator(seed, prompt_ids, answer_ids)
        sequence, noised = draw_samples(prompt_ids, answer_ids, mc_num, backbone.mask_id, generator)
        distinct, inverse = torch.unique(noised.masked, dim=0, return_inverse=True)  # (U, T), (mc_num,)
        weights.append(torch.bincount(inverse, minlength=distinct.shape[0]).float() / mc_num)  # (U,)
        for slot, pattern in enumerate(distinct):
            rows.append(_Row(index, slot, sequence, pattern, pattern.sum().item() / len(answer_ids)))

    # 2. pack rows of similar length into right-padded batches (padding is excluded by the attention mask)
    losses = [torch.zeros(weight.numel()) for weight in weights]
    rows.sort(key=lambda row: row.clean.numel())
    for start in range(0, len(rows), batch_size):
        members = rows[start : start + batch_size]
        length = max(row.clean.numel() for row in members)
        clean_ids = torch.full((len(members), length), backbone.eos_id, dtype=torch.long)  # (B, T)
        masked = torch.zeros((len(members), length), dtype=torch.bool)  # (B, T)
        attention_mask = torch.zeros((len(members), length), dtype=torch.long)  # (B, T)
        for position, row in enumerate(members):
            clean_ids[position, : row.clean.numel()] = row.clean
            masked[position, : row.clean.numel()] = row.masked
            attention_mask[position, : row.clean.numel()] = 1
        noised_ids = clean_ids.masked_fill(masked, backbone.mask_id)  # (B, T)
        noise_level = torch.tensor([row.noise_level for row in members], dtype=torch.float32)  # (B,)
        batch_losses = _weighted_losses(backbone, noised_ids, clean_ids, masked, noise_level, attention_mask)
        for position, row in enumerate(members):
            losses[row.request][row.slot] = batch_losses[position]
        if on_rows is not None:
            on_rows(len(members), len(rows))

    # 3. the estimate: minus the count-weighted mean over each request's samples
    return [-(loss * weight).sum().item() for loss, weight in zip(losses, weights)]


@torch.no_grad()
def greedy_matches(backbone: Backbone, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> bool:
    """Whether unmasking the most confident position one step at a time reproduces `answer_ids` exactly.

    Costs L forward passes; λ at each step is the fraction of the answer still masked.
    """
    answer_length = len(answer_ids)
    canvas = torch.tensor([[*prompt_ids] + [backbone.mask_id] * answer_length], device=backbone.device)  # (1, T)
    for step in range(answer_length):
        still_masked = canvas[0] == backbone.mask_id  # (T,)
        with routed_noise_level(backbone.model, (answer_length - step) / answer_length):
            logits = backbone.logits(canvas)[0, still_masked].float()  # (M, V)
        confidence, tokens = torch.softmax(logits, dim=-1).max(dim=-1)  # (M,), (M,)
        best = confidence.argmax()
        canvas[0, still_masked.nonzero()[best]] = tokens[best]
    return canvas[0, len(prompt_ids) :].tolist() == list(answer_ids)
