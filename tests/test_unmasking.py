"""The commit rules of the sampler family, on hand-made confidences and entropies (golden values)."""

from __future__ import annotations

import torch

from dllm_peft.diffusion.unmasking import (
    entropy_bounded_positions,
    threshold_positions,
    top_k_positions,
    transfer_schedule,
)

INF = float("inf")


def test_transfer_schedule_spreads_the_remainder_over_the_first_steps():
    assert transfer_schedule(8, 3) == [3, 3, 2]
    assert transfer_schedule(2, 4) == [1, 1, 0, 0]
    assert transfer_schedule(32, 32) == [1] * 32


def test_top_k_takes_the_most_confident_candidates():
    confidence = torch.tensor([[0.2, 0.9, -INF, 0.5], [0.1, -INF, 0.3, 0.2]])
    assert top_k_positions(confidence, 2).tolist() == [[False, True, False, True], [False, False, True, True]]
    assert not top_k_positions(confidence, 0).any()


def test_threshold_takes_every_candidate_above_it_and_always_the_best():
    confidence = torch.tensor([[0.2, 0.95, -INF, 0.91], [0.1, -INF, 0.3, 0.2]])
    candidates = confidence > -INF
    chosen = threshold_positions(confidence, candidates, 0.9)
    assert chosen.tolist() == [[False, True, False, True], [False, False, True, False]]


def test_entropy_bound_accepts_the_longest_low_entropy_run_within_the_bound():
    entropy = torch.tensor([[0.5, 0.1, 2.0, 0.3]])
    everything, nothing = torch.ones_like(entropy, dtype=torch.bool), torch.zeros_like(entropy, dtype=torch.bool)
    # order 0.1, 0.3, 0.5, 2.0 → Σ − max = 0, 0.1, 0.4, 0.9
    assert entropy_bounded_positions(entropy, everything, nothing, 0.5).tolist() == [[True, True, False, True]]
    assert entropy_bounded_positions(entropy, everything, nothing, 0.05).tolist() == [[False, True, False, False]]
    # a demoted position goes last: order 0.3, 0.5, 2.0, 0.1 → Σ − max = 0, 0.3, 0.8, 0.9
    demoted = torch.tensor([[False, True, False, False]])
    assert entropy_bounded_positions(entropy, everything, demoted, 0.5).tolist() == [[True, False, False, True]]
    # non-candidates are never taken, however low their entropy
    candidates = torch.tensor([[True, False, True, True]])
    assert entropy_bounded_positions(entropy, candidates, nothing, 0.5).tolist() == [[True, False, False, True]]
