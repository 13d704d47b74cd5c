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

`adaptive_estimates` (`--mc-estimator adaptive`) estimates the same quantity B(a) = E_k E_M [...] with fewer rows,
aimed at what decides a multiple-choice answer, the *difference* between options. The requests that share a prompt
form a question, drawn with one generator of the seed and the question's tokens (batching and order never change a
number):
- **Exact enumeration.** An answer with 2^L − 1 ≤ `ENUMERATION_ROWS` (and ≤ mc_num) masks is scored on every mask M,
  weighted by its probability under the estimator, P(M) = 1/L · 1/C(L, |M|): B(a) exactly, with no variance.
- **Antithetic pairs at stratified levels.** Otherwise samples come in pairs. A pair draws one level v ∈ [0, 1) and a
  uniform score per answer position; sample A masks the k = ⌊vL⌋ + 1 lowest-scored positions, sample B the
  L + 1 − k highest. Each sample alone has k uniform on 1..L and M uniform given k, so each is an unbiased estimate
  of B(a); a pair masks every position at least once (negatively correlated errors). The levels of successive pairs
  are a Kronecker sequence v_m = (v_0 + m·φ) mod 1, φ = (√5 − 1)/2, spread evenly over [0, 1) at every stopping
  time (stratification in k, as the reference's evenly spaced k).
- **Common random numbers.** All options of a question use the same levels and the same position scores (position i
  of every option gets the same score). Equal-length options then mask the same positions at the same k, options of
  other lengths nearby levels and overlapping positions, so the errors of their estimates are positively correlated
  and Var(Â − B̂) = Var(Â) + Var(B̂) − 2 Cov(Â, B̂) is smaller than for independent draws. Rows that show the model
  the same tokens (e.g. fully masked equal-length options) are forwarded once.
- **Adaptive stopping.** Rounds of `ROUND_SAMPLES` samples per option, all questions' rows batched together. After
  `MIN_ROUNDS` rounds, a question stops once the leading option's mean exceeds the runner-up's by `stop_se` standard
  errors of their difference, computed from the per-sample differences averaged within pairs (the pairs are the
  units; treating stratified levels as independent overstates the error, so the test is conservative), or once its
  options have `mc_num` samples. An enumerated option counts as a constant. A lone request (nothing to decide) takes
  all `mc_num` samples. The decision uses the raw sum (lm-eval's `acc`), not the length-normalised `acc_norm`.
A fixed number of samples gives an unbiased estimate; with stopping, the value at the stopping time is not exactly
unbiased (optional stopping), the price of spending samples only where the answer is in doubt.

`greedy_matches` is LLaDA's `suffix_greedy_prediction`: does greedy unmasking reproduce the answer? (lm-eval's
`is_greedy`, needed by a few tasks only.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
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


# -- the adaptive estimator (`--mc-estimator adaptive`) -----------------------------------------------------------------

ROUND_SAMPLES = 8  # samples per option per round: 4 antithetic pairs
MIN_ROUNDS = 2  # rounds before the first stopping test: 8 pairs make a usable standard error
ENUMERATION_ROWS = 2 * ROUND_SAMPLES  # enumerate an answer whose 2^L − 1 masks cost no more than the first rounds
GOLDEN = (5**0.5 - 1) / 2  # the Kronecker step of the stratified noise levels: evenly spread at any stopping time


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One request's adaptive estimate: the value, the samples it took (its rows before sharing), exact or not."""

    value: float
    samples: int
    exact: bool


@dataclasses.dataclass
class _Option:
    request: int
    length: int  # L, answer tokens
    exact: float | None = None  # the enumerated value
    values: list[float] = dataclasses.field(default_factory=list)  # per-sample estimates, in draw order

    def mean(self) -> float:
        return self.exact if self.exact is not None else sum(self.values) / len(self.values)

    def series(self, count: int) -> torch.Tensor:
        """(count,) float64: the per-sample values (an exact value stands for itself at every index)."""
        if self.exact is not None:
            return torch.full((count,), self.exact, dtype=torch.float64)
        return torch.tensor(self.values, dtype=torch.float64)


@dataclasses.dataclass
class _Question:
    prompt_length: int
    options: list[_Option]
    generator: torch.Generator
    start: float  # the random start of the noise-level sequence
    drawn: int = 0  # samples drawn per sampled option

    @property
    def sampled(self) -> list[_Option]:
        return [option for option in self.options if option.exact is None]


def enumeration_masks(answer_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-empty mask of an answer and its probability under the estimator (k uniform, then M uniform given k).

    Returns:
        masks (2^L − 1, L) bool; weights (2^L − 1,) float64 = 1 / (L · C(L, |M|)), summing to 1.
    """
    codes = torch.arange(1, 2**answer_length)  # (2^L − 1,)
    masks = (codes[:, None] >> torch.arange(answer_length)) & 1 == 1  # (2^L − 1, L)
    counts = masks.sum(dim=1)  # (2^L − 1,)
    binomial = torch.tensor([math.comb(answer_length, int(k)) for k in counts], dtype=torch.float64)
    return masks, 1.0 / (answer_length * binomial)


def paired_masks(lengths: Sequence[int], levels: Sequence[float], generator: torch.Generator) -> list[torch.Tensor]:
    """Antithetic samples shared by the options of a question (common random numbers), one pair per level.

    For each level v ∈ [0, 1) one uniform score per answer position (shared: position i of every option gets the same
    score) and, for an option of length L, k = ⌊v·L⌋ + 1: sample A masks the k lowest-scored positions, sample B the
    L + 1 − k highest. Each is marginally k uniform on 1..L and M uniform given k (unbiased); together they mask every
    position, overlapping in one.

    Returns:
        per option, (2 · len(levels), L) bool, in the order A₀, B₀, A₁, B₁, …
    """
    scores = torch.rand(len(levels), max(lengths), generator=generator, dtype=torch.float64)  # (P, Lmax)
    level = torch.tensor(levels, dtype=torch.float64)[:, None]  # (P, 1)
    masks = []
    for length in lengths:
        ranks = scores[:, :length].argsort(dim=1).argsort(dim=1)  # (P, L) rank of each position's score
        counts = torch.clamp(torch.floor(level * length).long() + 1, max=length)  # (P, 1) k of sample A
        first, second = ranks < counts, ranks >= counts - 1  # (P, L) each
        masks.append(torch.stack([first, second], dim=1).reshape(-1, length))  # (2P, L)
    return masks


def question_generator(seed: int, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]]) -> torch.Generator:
    """The generator of one question (a context and its options): a function of the seed and the tokens only."""
    key = (seed, list(prompt_ids), sorted(list(answer) for answer in answers))
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _row_losses(
    backbone: Backbone, entries: list[tuple[int, torch.Tensor, float]], sequences: list[torch.Tensor], batch_size: int
) -> torch.Tensor:
    """−(L/k) · Σ log p over the masked positions for each (request, masked (T,) bool, λ) entry; identical noised
    inputs are forwarded once, in the passes of `plan_passes`.

    Returns:
        (len(entries),) float32.
    """
    rows: dict[tuple[bytes, bytes, float], _Row] = {}
    for number, (request, masked, level) in enumerate(entries):
        noised = sequences[request].masked_fill(masked, backbone.mask_id)  # (T,)
        key = (noised.numpy().tobytes(), masked.numpy().tobytes(), level)
        row = rows.get(key)
        if row is None:
            row = rows[key] = _Row(noised, masked, level, [])
        row.users.append((request, number))
    losses = torch.zeros(len(entries))
    distinct_rows = list(rows.values())
    merged_tokens = MERGED_PASS_TOKENS if backbone.device.type == "cpu" else None
    for members in plan_passes([row.noised.numel() for row in distinct_rows], batch_size, merged_tokens=merged_tokens):
        chosen = [distinct_rows[index] for index in members]
        for row, loss in zip(chosen, _shared_row_losses(backbone, chosen, sequences)):
            for (_, number), value in zip(row.users, loss):
                losses[number] = value
    return losses


def _decided(question: _Question, stop_se: float) -> bool:
    """Whether the leading option is ahead of the runner-up by `stop_se` standard errors of their difference.

    The difference is taken sample by sample (the options share their draws), averaged within antithetic pairs; the
    pairs are the units of the standard error (treating the stratified levels as independent overstates it).
    """
    options = question.options
    if len(options) < 2:
        return False  # nothing to decide: the value itself is wanted, at full precision
    ranked = sorted(options, key=_Option.mean, reverse=True)
    leader, runner_up = ranked[0], ranked[1]
    count = question.drawn
    difference = leader.series(count) - runner_up.series(count)  # (count,)
    if leader.exact is not None and runner_up.exact is not None:
        return True
    units = torch.stack([chunk.mean() for chunk in difference.split(2)])  # (pairs,)
    if units.numel() < 2:
        return False
    standard_error = units.std().item() / math.sqrt(units.numel())
    return difference.mean().item() > stop_se * standard_error


@torch.no_grad()
def adaptive_estimates(
    backbone: Backbone,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    stop_se: float = 3.0,
    enumeration_rows: int = ENUMERATION_ROWS,
    on_requests: Callable[[int, int], None] | None = None,
) -> list[Estimate]:
    """The adaptive estimate of log p(answer | prompt) for many requests; requests with one prompt form a question.

    Args:
        mc_num: the most samples an option takes (and the most rows an enumeration may cost).
        stop_se: stop a question once its leader is ahead of the runner-up by this many standard errors.
        enumeration_rows: enumerate an answer exactly when its 2^L − 1 masks are at most this many (and ≤ mc_num).
        on_requests: progress, called after each round with (requests finished in it, requests in total).
    Returns:
        one `Estimate` per request, in order.
    """
    for _, answer_ids in requests:
        if not answer_ids:
            raise DllmPeftError("cannot score an empty answer; the continuation must hold at least one token")
    sequences = [torch.tensor([*prompt, *answer], dtype=torch.long) for prompt, answer in requests]  # each (T,)
    first_of: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}  # a repeated request is scored once
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (prompt_ids, answer_ids) in enumerate(requests):
        key = (tuple(prompt_ids), tuple(answer_ids))
        if key not in first_of:
            first_of[key] = index
            groups.setdefault(key[0], []).append(index)
    questions = []
    for prompt, members in groups.items():
        generator = question_generator(seed, prompt, [requests[index][1] for index in members])
        start = torch.rand((), generator=generator, dtype=torch.float64).item()
        options = [_Option(index, len(requests[index][1])) for index in members]
        questions.append(_Question(len(prompt), options, generator, start))

    # 1. answers short enough to enumerate: every mask once, weighted by its probability (exact, no variance)
    entries, owners = [], []
    for question in questions:
        for option in question.options:
            if 2**option.length - 1 > min(enumeration_rows, mc_num):
                continue
            masks, weights = enumeration_masks(option.length)
            for mask, weight in zip(masks, weights.tolist()):
                entries.append((option.request, _place(mask, question.prompt_length), mask.sum().item() / option.length))
                owners.append((option, weight))
            option.exact = 0.0
    for (option, weight), loss in zip(owners, _row_losses(backbone, entries, sequences, batch_size).tolist()):
        option.exact -= weight * loss

    # 2. the rest in rounds of shared antithetic samples, until decided or mc_num
    total, finished = len(requests), 0
    active = [question for question in questions if question.sampled]
    finished += sum(len(question.options) for question in questions if not question.sampled)
    if on_requests is not None:
        on_requests(finished, total)
    while active:
        entries, owners = [], []
        for question in active:
            count = min(ROUND_SAMPLES, mc_num - question.drawn)
            first_pair = question.drawn // 2
            pairs = range(first_pair, first_pair + (count + 1) // 2)
            levels = [(question.start + pair * GOLDEN) % 1.0 for pair in pairs]
            sampled = question.sampled
            masks = paired_masks([option.length for option in sampled], levels, question.generator)
            for option, option_masks in zip(sampled, masks):
                for mask in option_masks[:count]:  # an odd mc_num leaves the last pair's B undrawn
                    entries.append((option.request, _place(mask, question.prompt_length),
                                    mask.sum().item() / option.length))
                    owners.append(option)
            question.drawn += count
        for option, loss in zip(owners, _row_losses(backbone, entries, sequences, batch_size).tolist()):
            option.values.append(-loss)
        still = []
        for question in active:
            if question.drawn >= mc_num or (
                question.drawn >= MIN_ROUNDS * ROUND_SAMPLES and _decided(question, stop_se)
            ):
                finished += len(question.options)
            else:
                still.append(question)
        active = still
        if on_requests is not None:
            on_requests(finished, total)

    scored = {option.request: option for question in questions for option in question.options}
    estimates = []
    for prompt_ids, answer_ids in requests:
        option = scored[first_of[(tuple(prompt_ids), tuple(answer_ids))]]
        exact = option.exact is not None
        samples = (2**option.length - 1) if exact else len(option.values)
        estimates.append(Estimate(option.mean(), samples, exact))
    return estimates


def adaptive_log_likelihoods(
    backbone: Backbone,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    stop_se: float = 3.0,
    on_requests: Callable[[int, int], None] | None = None,
) -> list[float]:
    """The values of `adaptive_estimates`, one per request."""
    estimates = adaptive_estimates(backbone, requests, mc_num, batch_size, seed, stop_se, on_requests=on_requests)
    return [estimate.value for estimate in estimates]


def exact_log_likelihood(backbone: Backbone, prompt_ids: Sequence[int], answer_ids: Sequence[int],
                         batch_size: int = 32) -> float:
    """The quantity every estimator here estimates, computed over all 2^L − 1 masks (short answers only)."""
    [estimate] = adaptive_estimates(backbone, [(prompt_ids, answer_ids)], mc_num=2 ** len(answer_ids),
                                    batch_size=batch_size, enumeration_rows=2 ** len(answer_ids))
    return estimate.value


def _place(answer_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """(L,) answer mask → (prompt_length + L,) bool mask of the whole sequence."""
    return torch.cat([torch.zeros(prompt_length, dtype=torch.bool), answer_mask])
