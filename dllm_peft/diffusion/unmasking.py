"""Which masked positions a sampling step commits: the three rules of the sampler family.

Every rule sees the masked positions of the current block of each active sequence and returns a boolean choice:

* `top_k_positions` — LLaDA `generate.py`: a fixed number of tokens per step, the most confident first. The number
  comes from `transfer_schedule`: the block's mask count spread evenly over its steps, remainder to the first steps.
* `threshold_positions` — Fast-dLLM parallel decoding (Wu et al. 2025, arXiv 2505.22618): every token whose
  confidence exceeds a threshold, and always the most confident one, so a step never stalls.
* `entropy_bounded_positions` — the EB-sampler (Ben-Hamu et al. 2025, arXiv 2505.24857; transformers'
  DiffusionGemma): the lowest-entropy tokens, as many as keep Σ entropy − max entropy within a bound. The left side
  bounds the mutual information between the accepted tokens, so they are close to independent given the canvas.

"Demoted" positions (EOS/EoT predictions under `--eos-suppression confidence`) are taken only after all others.
"""

from __future__ import annotations

import torch


def transfer_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps so that all `masked` positions are filled (LLaDA's rule).

    Returns:
        `steps` counts summing to `masked`; the first `masked % steps` of them are one larger.
    """
    base, remainder = divmod(masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


def top_k_positions(confidence: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` most confident positions of every row.

    Args:
        confidence: (A, L) float; −inf where a position is not a candidate (already decoded).
        count: positions to take per row; at most the number of candidates.
    Returns:
        (A, L) bool.
    """
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    if count > 0:
        chosen.scatter_(1, confidence.topk(count, dim=1).indices, True)
    return chosen


def threshold_positions(confidence: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """Every candidate whose confidence exceeds `threshold`, plus each row's most confident candidate.

    Args:
        confidence: (A, L) float; −inf where not a candidate.
        candidates: (A, L) bool, at least one per row.
    Returns:
        (A, L) bool.
    """
    chosen = candidates & (confidence > threshold)
    chosen[torch.arange(confidence.shape[0], device=confidence.device), confidence.argmax(dim=1)] = True
    return chosen


def entropy_bounded_positions(
    entropy: torch.Tensor, candidates: torch.Tensor, demoted: torch.Tensor, bound: float
) -> torch.Tensor:
    """The longest run of candidates, in order of increasing entropy, with Σ entropy − max entropy ≤ `bound`.

    Args:
        entropy: (A, L) float, entropy of each position's predictive distribution (nats).
        candidates: (A, L) bool, at least one per row.
        demoted: (A, L) bool, candidates ordered after all others whatever their entropy.
    Returns:
        (A, L) bool; the first candidate of the order is always taken (its own excess is 0).
    """
    # Order key: candidates by entropy, demoted candidates after them, non-candidates last.
    key = entropy + demoted.to(entropy.dtype) * (entropy.max() + 1.0)
    key = key.masked_fill(~candidates, float("inf"))
    order = key.argsort(dim=1, stable=True)  # (A, L)
    sorted_entropy = entropy.gather(1, order).masked_fill(~candidates.gather(1, order), 0.0)
    # Σ − max never decreases along the order, so the accepted set is a prefix of it.
    excess = sorted_entropy.cumsum(dim=1) - sorted_entropy.cummax(dim=1).values  # (A, L)
    accepted_sorted = (excess <= bound) & candidates.gather(1, order)
    return torch.zeros_like(candidates).scatter(1, order, accepted_sorted)
