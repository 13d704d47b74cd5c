"""The adaptive Monte-Carlo log-likelihood of `--mc-estimator adaptive`: the bound of `likelihood.py`, fewer rows.

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
- **Adaptive stopping.** Rounds of `ROUND_SAMPLES` samples per option (4 antithetic pairs), all questions' rows
  batched together. After each round a question's leading option is compared with each other option through the
  per-sample differences of their values, averaged within pairs (the pairs are the units of the standard error s;
  treating the stratified levels as independent overstates it, so the test is conservative). With n samples drawn,
  margin m over a rival and N = mc_num, the question stops
  * *decided* when m > t_{P−1}(Φ(`stop_se`)) · s for every rival, P the pairs: `stop_se` standard errors read as a
    normal quantile and turned into Student's t for the few pairs behind s (1.25 → 1.58 at the first test, after 4
    pairs; 1.26 after 64), so an early stop needs a clear lead. "The leader is the best option" is the intersection
    of "the leader beats option o" over the rivals, so testing each at one level is a valid test of the claim at
    that level (an intersection-union test, no multiplicity correction needed); testing the runner-up by mean alone
    is not: a rival further behind but with a larger standard error can be the likelier winner;
  * *a near tie* (only with `futility_se` > 0, and from n ≥ N / `FUTILITY_FROM` on) when (m / s) · √(N / n) <
    `futility_se` for the closest rival: even with all N samples the leader would be ahead by fewer than
    `futility_se` standard errors, so the full budget would not settle it either; the current leader is kept. Off by
    default: on the benchmark it saves tokens but loses as many agreements as it saves; at the first tests (4 pairs)
    it called real differences ties;
  * at N samples.
  An enumerated option counts as a constant. A lone request (nothing to decide) takes all `mc_num` samples. The
  decision uses the raw sum (lm-eval's `acc`), not the length-normalised `acc_norm`. The defaults (`stop_se` 1.25,
  no tie stop, first test after one round) come from `benchmarks/loglikelihood/estimator.py --sweep`, run on other
  questions (24 per task in BPE tokens, 3 in bytes) than the ones it reports.
A fixed number of samples gives an unbiased estimate; with stopping, the value at the stopping time is not exactly
unbiased (optional stopping), the price of spending samples only where the answer is in doubt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .likelihood import MERGED_PASS_TOKENS, _Row, _shared_row_losses, plan_passes

ROUND_SAMPLES = 8  # samples per option per round: 4 antithetic pairs
MIN_ROUNDS = 1  # rounds before the first stopping test (its 4 pairs are paid for by Student's t, see `_settled`)
STOP_SE = 1.25  # `--mc-stop-se`: the leader's lead, in standard errors (read as a normal quantile), that decides
FUTILITY_SE = 0.0  # `--mc-futility-se`: the lead, in standard errors at mc_num samples, below which a question stops
FUTILITY_FROM = 4  # ... looked at only from mc_num / 4 samples on: the standard error of a few pairs cannot call a tie
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


def _settled(question: _Question, stop_se: float, futility_se: float, mc_num: int) -> bool:
    """Whether a question may stop: its leader is ahead of *every* other option by `stop_se` standard errors of their
    difference (decided), or would still be ahead of its closest rival by fewer than `futility_se` of them at
    `mc_num` samples (a near tie the whole budget would not settle either).

    Each difference is taken sample by sample (the options share their draws), averaged within antithetic pairs; the
    pairs are the units of the standard error (treating the stratified levels as independent overstates it).
    """
    options = question.options
    if len(options) < 2:
        return False  # nothing to decide: the value itself is wanted, at full precision
    ranked = sorted(options, key=_Option.mean, reverse=True)
    leader, count = ranked[0], question.drawn
    leads = []  # (the leader's lead over a rival in standard errors, the pairs behind it)
    for rival in ranked[1:]:
        if leader.exact is not None and rival.exact is not None:
            continue  # both enumerated: the lead is known
        difference = leader.series(count) - rival.series(count)  # (count,)
        units = torch.stack([chunk.mean() for chunk in difference.split(2)])  # (pairs,)
        if units.numel() < 2:
            return False
        standard_error = units.std().item() / math.sqrt(units.numel())
        leads.append((math.inf if standard_error == 0 else difference.mean().item() / standard_error, units.numel()))
    if all(lead > _critical(stop_se, pairs - 1) for lead, pairs in leads):
        return True  # the intersection-union test: the leader beats each rival at the level of `stop_se`
    if futility_se <= 0 or count * FUTILITY_FROM < mc_num:
        return False
    closest = min(lead for lead, _ in leads)
    return closest * math.sqrt(mc_num / count) < futility_se  # the lead in standard errors at mc_num samples


@functools.lru_cache(maxsize=256)
def _critical(stop_se: float, degrees_of_freedom: int) -> float:
    """Student's t quantile with the one-sided level of `stop_se` normal standard errors: the standard error of a few
    pairs is itself uncertain (4 pairs: 1.25 → 1.58, 2 → 3.31; 64 pairs: 1.25 → 1.26)."""
    if math.isinf(stop_se):
        return stop_se
    # scipy: lm-eval's dependency (through scikit-learn), declared in the eval extra; imported when first needed
    from scipy.stats import norm, t

    return float(t.ppf(norm.cdf(stop_se), degrees_of_freedom))


@torch.no_grad()
def adaptive_estimates(
    backbone: Backbone,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    stop_se: float = STOP_SE,
    enumeration_rows: int = ENUMERATION_ROWS,
    on_requests: Callable[[int, int], None] | None = None,
    futility_se: float = FUTILITY_SE,
) -> list[Estimate]:
    """The adaptive estimate of log p(answer | prompt) for many requests; requests with one prompt form a question.

    Args:
        mc_num: the most samples an option takes (and the most rows an enumeration may cost).
        stop_se: stop a question once its leader is ahead of every other option by this many standard errors.
        futility_se: stop a question once its leader would be ahead by fewer standard errors than this even at mc_num
            samples (a near tie); 0 never stops for that reason.
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
                question.drawn >= MIN_ROUNDS * ROUND_SAMPLES and _settled(question, stop_se, futility_se, mc_num)
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


def exact_log_likelihood(backbone: Backbone, prompt_ids: Sequence[int], answer_ids: Sequence[int],
                         batch_size: int = 32) -> float:
    """The quantity every estimator here estimates, computed over all 2^L − 1 masks (short answers only)."""
    [estimate] = adaptive_estimates(backbone, [(prompt_ids, answer_ids)], mc_num=2 ** len(answer_ids),
                                    batch_size=batch_size, enumeration_rows=2 ** len(answer_ids))
    return estimate.value


def _place(answer_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """(L,) answer mask → (prompt_length + L,) bool mask of the whole sequence."""
    return torch.cat([torch.zeros(prompt_length, dtype=torch.bool), answer_mask])
