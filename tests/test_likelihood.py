"""The Monte-Carlo log-likelihood: stratified k, λ = k/L, batched across requests = one request at a time."""

from __future__ import annotations

import random

import pytest
import torch

from dllm_peft.adapters.base import inject
from dllm_peft.adapters.registry import build_adapter_config, get_method
from dllm_peft.diffusion import conditioning
from dllm_peft.diffusion.likelihood import (
    PADDING_FRACTION,
    greedy_matches,
    log_likelihoods,
    plan_passes,
    reference_log_likelihood,
    request_generator,
    stratified_mask_counts,
)
from dllm_peft.errors import DllmPeftError

from .conftest import randomize_adapter


def requests_of(backbone, texts):
    return [(backbone.encode(prompt), backbone.encode(answer)) for prompt, answer in texts]


TEXTS = [
    ("Question: 2 + 2 = ?\nAnswer:", " 4"),
    ("Uppercase: apple river\nAnswer:", " APPLE RIVER"),
    ("Reverse: stone\nAnswer:", " enots"),
    ("Q:", " a much longer answer than the others"),
    ("x", "y"),
]


def test_stratified_counts_cover_every_noise_level_evenly():
    generator = torch.Generator().manual_seed(0)
    assert stratified_mask_counts(5, 8, generator).tolist() == [5, 1, 1, 2, 3, 3, 4, 4]  # golden
    one_each = stratified_mask_counts(7, 7, torch.Generator().manual_seed(1))
    assert sorted(one_each.tolist()) == [1, 2, 3, 4, 5, 6, 7]
    for length in (4, 30):
        counts = stratified_mask_counts(length, 128, torch.Generator().manual_seed(length))
        histogram = torch.bincount(counts, minlength=length + 1)[1:]  # how often each k in 1..L is drawn
        assert counts.min() >= 1 and histogram.max() - histogram.min() <= 2  # 128/L each, up to rounding


def test_batched_estimate_equals_the_one_by_one_reference(backbone):
    requests = requests_of(backbone, TEXTS)
    reference = [reference_log_likelihood(backbone, p, a, mc_num=16, batch_size=8, seed=3) for p, a in requests]
    batched = log_likelihoods(backbone, requests, mc_num=16, batch_size=7, seed=3)
    assert batched == pytest.approx(reference, abs=1e-4)
    assert all(value < 0 for value in reference)


def test_order_and_batch_size_do_not_change_a_request_s_number(backbone):
    requests = requests_of(backbone, TEXTS)
    first = log_likelihoods(backbone, requests, mc_num=8, batch_size=64, seed=1)
    order = list(range(len(requests)))
    random.Random(0).shuffle(order)
    shuffled = log_likelihoods(backbone, [requests[i] for i in order], mc_num=8, batch_size=3, seed=1)
    assert [shuffled[order.index(i)] for i in range(len(requests))] == pytest.approx(first, abs=1e-4)


def test_a_one_token_answer_is_scored_exactly_with_one_forward_row(backbone):
    prompt, answer = backbone.encode("Answer:"), backbone.encode("B")
    rows = []
    estimate = log_likelihoods(backbone, [(prompt, answer)], mc_num=128, on_rows=lambda n, total: rows.append(total))
    canvas = torch.tensor([prompt + [backbone.mask_id]])
    exact = torch.log_softmax(backbone.logits(canvas)[0, -1].float(), dim=-1)[answer[0]].item()
    assert rows == [1] and estimate[0] == pytest.approx(exact, abs=1e-5)


def test_noise_level_routed_to_a_nara_adapter_is_k_over_l(backbone):
    method = get_method("nara")
    inject(backbone.model, build_adapter_config("nara", rank=4), method.layer_class, backbone.default_targets)
    randomize_adapter(backbone.model)
    backbone.model.eval()  # adapter dropout off, as in evaluation
    router = conditioning.find_router(backbone.model)
    seen, route = [], router.route
    router.route = lambda level: (seen.append(level.clone()), route(level))[1]
    prompt, answer = backbone.encode("Uppercase: tiger\nAnswer:"), backbone.encode(" TIGER")
    reference = reference_log_likelihood(backbone, prompt, answer, mc_num=8, batch_size=8, seed=5)
    counts = stratified_mask_counts(len(answer), 8, request_generator(5, prompt, answer))
    assert torch.equal(seen[0], counts.float() / len(answer))
    assert log_likelihoods(backbone, [(prompt, answer)], mc_num=8, seed=5)[0] == pytest.approx(reference, abs=1e-4)


def test_greedy_match_is_true_for_the_greedy_answer_only(backbone):
    prompt = backbone.encode("Reverse: river\nAnswer:")
    canvas = torch.tensor([prompt + [backbone.mask_id] * 3])  # greedy unmasking, written out independently
    for _ in range(3):
        masked = (canvas[0] == backbone.mask_id).nonzero().squeeze(1)
        probabilities = torch.softmax(backbone.logits(canvas)[0, masked].float(), dim=-1)
        confidence, tokens = probabilities.max(dim=-1)
        canvas[0, masked[confidence.argmax()]] = tokens[confidence.argmax()]
    greedy = canvas[0, len(prompt) :].tolist()
    assert greedy_matches(backbone, prompt, greedy)
    assert not greedy_matches(backbone, prompt, [(greedy[0] + 1) % 256, *greedy[1:]])


def test_an_empty_answer_is_a_clear_error(backbone):
    with pytest.raises(DllmPeftError, match="empty answer"):
        log_likelihoods(backbone, [(backbone.encode("a"), [])], mc_num=4)


def test_options_with_equal_lengths_share_their_fully_masked_row(backbone):
    prompt = backbone.encode("Which letter?\nAnswer:")
    options = [(prompt, backbone.encode(letter)) for letter in "ABCD"]  # one token each: one possible sample
    rows = []
    batched = log_likelihoods(backbone, options, mc_num=32, batch_size=8, seed=2,
                              on_rows=lambda n, total: rows.append(total))
    reference = [reference_log_likelihood(backbone, p, a, mc_num=32, batch_size=8, seed=2) for p, a in options]
    assert rows == [1] and batched == pytest.approx(reference, abs=1e-5)
    assert len(set(batched)) == 4  # one forward row, four different targets


def test_pass_plan_fills_whole_passes_first_and_bounds_the_padding():
    lengths = [50] * 9 + [49, 48, 47, 30, 30, 12, 11]
    passes = plan_passes(lengths, batch_size=4, merged_tokens=200)
    assert sorted(index for members in passes for index in members) == list(range(len(lengths)))
    assert all(len(members) <= 4 for members in passes)
    assert passes[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # whole passes of one length, unpadded
    unmerged = sum(-(-lengths.count(length) // 4) for length in set(lengths))
    assert len(passes) < unmerged
    for members in passes:
        longest = max(lengths[index] for index in members)
        padding = sum(longest - lengths[index] for index in members)
        assert padding <= PADDING_FRACTION * longest * len(members)
    assert [8, 9, 10, 11] in passes and [12, 13] in passes and [14, 15] in passes  # 50 and 30 never share a pass
    assert plan_passes(lengths, batch_size=4, merged_tokens=150)[2:4] == [[8, 9, 10], [11]]  # 4 × 50 > 150 tokens
    assert plan_passes(lengths, batch_size=4, merged_tokens=None) == passes  # a GPU: rows and padding decide
    with pytest.raises(DllmPeftError, match="batch_size"):
        plan_passes([3], batch_size=0)


def test_pass_plan_never_splits_the_rows_of_one_length():
    """Eight rows of 100 tokens exceed the 512-token merge cap but stay one pass, as the reference runs them."""
    lengths = [100] * 8 + [99] * 8 + [60] * 3 + [20] * 2 + [19] * 2
    passes = plan_passes(lengths, batch_size=32)
    assert passes[:2] == [list(range(8)), list(range(8, 16))]
    assert passes[2:] == [[16, 17, 18], [19, 20, 21, 22]]
    for batch_size in (1, 3, 32):
        plan = plan_passes(lengths, batch_size)
        assert len(plan) <= sum(-(-lengths.count(length) // batch_size) for length in set(lengths))


@pytest.mark.parametrize("method", [None, "nara"])
def test_rows_of_different_lengths_share_a_padded_pass_with_the_reference_numbers(backbone, method):
    if method is not None:
        inject(backbone.model, build_adapter_config(method, rank=4), get_method(method).layer_class,
               backbone.default_targets)
        randomize_adapter(backbone.model)
        backbone.model.eval()
    prompts = ["Question: what is 7 + 5?\nAnswer:", "Question: what is 17 + 5?\nAnswer:",
               "Question: what is 117 + 5?\nAnswer:"]
    requests = [(backbone.encode(prompt), backbone.encode(answer)) for prompt in prompts for answer in (" 12", " 22")]
    passes = []
    batched = log_likelihoods(backbone, requests, mc_num=1, batch_size=8, seed=4,
                              on_rows=lambda n, total: passes.append(n))
    reference = [reference_log_likelihood(backbone, p, a, mc_num=1, batch_size=8, seed=4) for p, a in requests]
    assert passes == [6]  # three lengths, one pass (the reference runs six)
    assert batched == pytest.approx(reference, abs=1e-4)
