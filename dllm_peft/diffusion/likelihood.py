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
  own generator, seeded from the seed and its tokens, so order and batching never change a number). A noised input
  is forwarded once however many samples use it: identical samples of a request (a one-token answer has a single
  possible sample), and samples of different requests that feed the model the same tokens at the same λ (the
  options of a multiple-choice question with equal lengths share their fully masked sample). The distinct rows of
  all requests then share forward passes of up to `batch_size` rows (`plan_passes`): rows of one length fill whole
  passes without padding, and the partial passes left over are merged across lengths, right-padded by at most
  `PADDING_FRACTION` of a pass's tokens, so many requests with few rows each (short answers) cost few passes. Every
  user of a row is scored on its own clean tokens from the row's log-probabilities.

The reference's number does not depend on `batch_size`: the k of all `mc_num` samples are spaced in one sequence,
and the estimate is their plain mean. LLaDA's `eval_llada.py` spaces k anew inside each forward batch (its defaults:
128 samples in batches of 32), and `torch.round` sends the half-way points to even k: for an 8-token answer, step
8/32 = 0.25, even k are drawn 5 times per batch and odd k 3 times, a bias in the expected value (0.83 nats on an
8-token answer in the issue's check against their code), so figures differ slightly from theirs. One sequence of 128
keeps a smaller residue of the same rounding (17 : 15 for L = 8); the adaptive estimator below has none.

`adaptive_likelihood.py` holds the cheaper estimator of `--mc-estimator adaptive`.

`greedy_matches` is LLaDA's `suffix_greedy_prediction`: does greedy unmasking reproduce the answer? (lm-eval's
`is_greedy`, needed by a few tasks only.)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .conditioning import noise_level as routed_noise_level
from .schedule import NoisedBatch, forward_process

PADDING_FRACTION = 0.125  # at most this share of a merged pass's tokens is padding
MERGED_PASS_TOKENS = 512  # on a CPU, merged passes stop growing here (padding included); elsewhere only rows count


@dataclasses.dataclass
class _Row:
    """One distinct noised sequence, waiting for its forward pass; several samples, of one or more requests, use it."""

    noised: torch.Tensor  # (T,) prompt + answer with the sample's answer positions masked
    masked: torch.Tensor  # (T,) bool, the masked answer positions
    noise_level: float  # λ = k / L
    users: list[tuple[int, int]]  # (request, slot): whose distinct sample this row is


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
        logits = backbone.logits(noised_ids.to(device), None if attention_mask is None else attention_mask.to(device),
                                 noise_level=noise_level)
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
    # 1. draw each request's samples exactly as the reference does; one row per distinct noised input, shared by every
    #    sample (of any request) that feeds the model the same tokens at the same λ
    sequences: list[torch.Tensor] = []  # per request: (T,) prompt + answer
    weights: list[torch.Tensor] = []  # per request: (U,) share of its mc_num samples each distinct sample stands for
    rows: dict[tuple[bytes, bytes, float], _Row] = {}
    for index, (prompt_ids, answer_ids) in enumerate(requests):
        generator = request_generator(seed, prompt_ids, answer_ids)
        sequence, noised = draw_samples(prompt_ids, answer_ids, mc_num, backbone.mask_id, generator)
        distinct, inverse = torch.unique(noised.masked, dim=0, return_inverse=True)  # (U, T), (mc_num,)
        sequences.append(sequence)
        weights.append(torch.bincount(inverse, minlength=distinct.shape[0]).float() / mc_num)  # (U,)
        noised_ids = sequence.masked_fill(distinct, backbone.mask_id)  # (U, T)
        levels = (distinct.sum(dim=1).double() / len(answer_ids)).tolist()  # (U,) λ = k / L
        for slot, (ids, pattern, level) in enumerate(zip(noised_ids, distinct, levels)):
            key = (ids.numpy().tobytes(), pattern.numpy().tobytes(), level)
            row = rows.get(key)
            if row is None:
                row = rows[key] = _Row(ids, pattern, level, [])
            row.users.append((index, slot))

    # 2. forward the distinct rows in the passes of `plan_passes`: never more passes than the reference runs
    losses = [torch.zeros(weight.numel()) for weight in weights]
    distinct_rows = list(rows.values())
    merged_tokens = MERGED_PASS_TOKENS if backbone.device.type == "cpu" else None
    for members in plan_passes([row.noised.numel() for row in distinct_rows], batch_size, merged_tokens=merged_tokens):
        chosen = [distinct_rows[index] for index in members]
        for row, loss in zip(chosen, _shared_row_losses(backbone, chosen, sequences)):
            for (request, slot), value in zip(row.users, loss):
                losses[request][slot] = value
        if on_rows is not None:
            on_rows(len(chosen), len(distinct_rows))

    # 3. the estimate: minus the count-weighted mean over each request's samples
    return [-(loss * weight).sum().item() for loss, weight in zip(losses, weights)]


def plan_passes(
    lengths: Sequence[int],
    batch_size: int,
    padding_fraction: float = PADDING_FRACTION,
    merged_tokens: int | None = MERGED_PASS_TOKENS,
) -> list[list[int]]:
    """Which rows share each forward pass, as lists of indices into `lengths`.

    Rows of one length fill passes of `batch_size` rows first (no padding). What is left of each length (fewer than
    `batch_size` rows) stays together, and these groups, longest first, are merged into passes of up to `batch_size`
    rows while the padding to the pass's longest row stays within `padding_fraction` of the pass's tokens and the pass
    within `merged_tokens` tokens (None: no token cap). Merging pays where passes are tiny (a few short rows: the
    fixed cost of a pass dominates); on a CPU a pass of a few hundred tokens already runs at full speed per token, so
    larger merges would only add padding, while a GPU keeps gaining up to `batch_size` rows. A group is never split,
    so there are never more passes than in the unmerged plan (`ceil(rows / batch_size)` per length), hence never more
    than the one-request-at-a-time loop runs; each row is in exactly one pass.
    """
    if batch_size < 1:
        raise DllmPeftError(f"batch_size must be at least 1, got {batch_size}")
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    passes, current = [], []
    for length in sorted(by_length, reverse=True):
        group = by_length[length]
        whole = len(group) - len(group) % batch_size
        passes += [group[start : start + batch_size] for start in range(0, whole, batch_size)]
        rest = group[whole:]
        if not rest:
            continue
        if current:
            longest, rows = lengths[current[0]], len(current) + len(rest)
            padding = sum(longest - lengths[member] for member in current) + (longest - length) * len(rest)
            if rows > batch_size or padding > padding_fraction * longest * rows or (
                merged_tokens is not None and longest * rows > merged_tokens
            ):
                passes.append(current)
                current = []
        current = current + rest
    if current:
        passes.append(current)
    return passes


def _shared_row_losses(backbone: Backbone, members: list[_Row], sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    """One forward pass over `members` (right-padded to the longest); for each row, Σ over its masked positions of
    −log p(clean token), divided by λ, once per user of the row (each user's own clean tokens are the targets).

    Returns:
        per row, (users,) float32.
    """
    lengths = [row.noised.numel() for row in members]
    width = max(lengths)
    noised_ids = torch.full((len(members), width), backbone.mask_id, dtype=torch.long)  # (B, T), pads never scored
    masked = torch.zeros(len(members), width, dtype=torch.bool)  # (B, T)
    for position, row in enumerate(members):
        noised_ids[position, : lengths[position]] = row.noised
        masked[position, : lengths[position]] = row.masked
    real = torch.arange(width) < torch.tensor(lengths)[:, None]  # (B, T)
    attention_mask = None if bool(real.all()) else real.long()
    noise_level = torch.tensor([row.noise_level for row in members], dtype=torch.float32)  # (B,)
    device = backbone.device
    keep = masked.any(dim=0).nonzero().squeeze(1)  # (K,) the positions masked in some row: the only ones scored
    column = torch.full((width,), -1, dtype=torch.long)  # (T,) position -> its column of the kept logits
    column[keep] = torch.arange(keep.numel())
    with routed_noise_level(backbone.model, noise_level):
        logits = backbone.logits(noised_ids.to(device), None if attention_mask is None else attention_mask.to(device),
                                 keep=keep, noise_level=noise_level)  # (B, K, V)
    rows, cols = masked.nonzero(as_tuple=True)  # (N,), (N,): every masked position of the pass
    log_probs = torch.log_softmax(logits[rows.to(device), column[cols].to(device)].float(), dim=-1).cpu()  # (N, V)
    entry = torch.full(masked.shape, -1, dtype=torch.long)  # (B, T): row of log_probs, or -1
    entry[rows, cols] = torch.arange(rows.numel())

    # every user of every row: its row in the pass and its clean tokens
    owner = torch.tensor([position for position, row in enumerate(members) for _ in row.users])  # (C,)
    targets = torch.zeros(owner.numel(), width, dtype=torch.long)  # (C, T), read at masked positions only
    for user, request in enumerate(request for row in members for request, _ in row.users):
        targets[user, : sequences[request].numel()] = sequences[request]
    users, positions = masked[owner].nonzero(as_tuple=True)  # (M,), (M,)
    token_log_probs = log_probs[entry[owner[users], positions], targets[users, positions]]  # (M,)
    summed = torch.zeros(owner.numel()).index_add(0, users, token_log_probs)  # (C,)
    per_user = -summed / noise_level[owner]  # (C,)
    return list(per_user.split([len(row.users) for row in members]))


@torch.no_grad()
def greedy_matches(backbone: Backbone, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> bool:
    """Whether unmasking the most confident position one step at a time reproduces `answer_ids` exactly.

    Costs L forward passes; λ at each step is the fraction of the answer still masked.
    """
    answer_length = len(answer_ids)
    canvas = torch.tensor([[*prompt_ids] + [backbone.mask_id] * answer_length], device=backbone.device)  # (1, T)
    for step in range(answer_length):
        still_masked = canvas[0] == backbone.mask_id  # (T,)
        level = (answer_length - step) / answer_length
        with routed_noise_level(backbone.model, level):
            logits = backbone.logits(canvas, noise_level=level)[0, still_masked].float()  # (M, V)
        confidence, tokens = torch.softmax(logits, dim=-1).max(dim=-1)  # (M,), (M,)
        best = confidence.argmax()
        canvas[0, still_masked.nonzero()[best]] = tokens[best]
    return canvas[0, len(prompt_ids) :].tolist() == list(answer_ids)
