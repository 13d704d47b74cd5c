"""The adaptive Monte-Carlo log-likelihood (`--mc-estimator adaptive`): unbiased, exact where it enumerates, and
never past mc_num."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from dllm_peft.diffusion.adaptive_likelihood import (
    FUTILITY_FROM,
    MIN_ROUNDS,
    ROUND_SAMPLES,
    adaptive_estimates,
    enumeration_masks,
    exact_log_likelihood,
    paired_masks,
)
from dllm_peft.diffusion.likelihood import reference_log_likelihood
from dllm_peft.evaluation.lm import DllmPeftLM

PROMPT = "Reverse: stone\nAnswer:"
OPTIONS = (" eno", " enots", " xyzab")  # 4, 6 and 6 tokens: CRN across equal and different lengths


def question(backbone, options=OPTIONS, prompt=PROMPT):
    prompt_ids = backbone.encode(prompt)
    return [(prompt_ids, backbone.encode(option)) for option in options]


def test_enumeration_weights_are_the_estimator_s_mask_probabilities():
    masks, weights = enumeration_masks(4)
    assert masks.shape == (15, 4) and len({tuple(mask.tolist()) for mask in masks}) == 15
    assert weights.sum().item() == pytest.approx(1.0)
    # P(M) = P(k = |M|) · P(M | k) = 1/L · 1/C(L, k)
    assert weights[masks.sum(dim=1) == 2].tolist() == pytest.approx([1 / (4 * 6)] * 6)


def test_paired_samples_have_uniform_k_and_cover_every_position():
    generator = torch.Generator().manual_seed(0)
    levels = [index / 400 for index in range(400)]
    first, second = paired_masks([5, 3], levels, generator)  # (800, 5), (800, 3)
    counts = first.sum(dim=1)  # k of every sample of the 5-token option
    assert torch.bincount(counts, minlength=6)[1:].tolist() == [160] * 5  # every k in 1..5 equally often
    pairs = first.reshape(400, 2, 5)
    assert bool((pairs[:, 0] | pairs[:, 1]).all())  # antithetic: together a pair masks every position
    assert ((pairs[:, 0] & pairs[:, 1]).sum(dim=1) == 1).all()  # and overlaps in exactly one
    # common random numbers: the 3-token option's masks are drawn from the same position scores and levels
    assert second.shape == (800, 3) and second.sum(dim=1).min() >= 1


def test_enumeration_is_the_exhaustive_mean_of_the_reference_estimator(backbone):
    prompt_ids, answer_ids = question(backbone, (" ab",))[0]  # 3 tokens: 7 masks
    exact = exact_log_likelihood(backbone, prompt_ids, answer_ids)
    [estimate] = adaptive_estimates(backbone, [(prompt_ids, answer_ids)], mc_num=128)
    assert estimate.exact and estimate.samples == 7 and estimate.value == pytest.approx(exact, abs=1e-5)
    # the reference estimator at many samples converges on the same number
    reference = reference_log_likelihood(backbone, prompt_ids, answer_ids, mc_num=2048, batch_size=256)
    assert reference == pytest.approx(exact, abs=0.05)


def test_sampled_estimates_are_unbiased_against_exhaustive_computation(backbone):
    requests = question(backbone)
    exact = [exact_log_likelihood(backbone, prompt, answer) for prompt, answer in requests]
    draws = [[estimate.value for estimate in adaptive_estimates(
        backbone, requests, mc_num=8, seed=seed, stop_se=math.inf, enumeration_rows=0)] for seed in range(60)]
    for option, truth in enumerate(exact):
        values = [draw[option] for draw in draws]
        standard_error = statistics.stdev(values) / math.sqrt(len(values))
        assert abs(statistics.mean(values) - truth) < 4 * standard_error + 1e-3


def test_adaptive_stopping_respects_mc_num_and_stops_decided_questions_early(backbone):
    requests = question(backbone)
    for mc_num in (3, 13):  # never past mc_num, odd or not
        estimates = adaptive_estimates(backbone, requests, mc_num=mc_num, stop_se=math.inf, enumeration_rows=0)
        assert [estimate.samples for estimate in estimates] == [mc_num] * 3
    early = adaptive_estimates(backbone, requests, mc_num=128, stop_se=1e-9, enumeration_rows=0)
    assert [estimate.samples for estimate in early] == [MIN_ROUNDS * ROUND_SAMPLES] * 3
    never = adaptive_estimates(backbone, requests, mc_num=40, stop_se=1e9, enumeration_rows=0, futility_se=0)
    assert [estimate.samples for estimate in never] == [40] * 3
    tie = adaptive_estimates(backbone, requests, mc_num=128, stop_se=1e9, enumeration_rows=0, futility_se=1e9)
    assert [estimate.samples for estimate in tie] == [128 // FUTILITY_FROM] * 3  # a hopeless tie, once ties are called
    alone = adaptive_estimates(backbone, requests[:1], mc_num=24, enumeration_rows=0)  # nothing to decide
    assert alone[0].samples == 24


def test_a_question_s_numbers_do_not_depend_on_its_batch_or_order(backbone):
    requests = question(backbone)
    other = question(backbone, (" 4", " 5"), "Question: 2 + 2 = ?\nAnswer:")
    alone = [estimate.value for estimate in adaptive_estimates(backbone, requests, batch_size=4)]
    mixed = adaptive_estimates(backbone, other + requests[::-1], batch_size=7)
    assert [estimate.value for estimate in mixed[2:]][::-1] == pytest.approx(alone, abs=1e-5)


def test_the_lm_eval_model_takes_mc_estimator_and_the_sampler_preset(backbone):
    from lm_eval.api.instance import Instance

    lm = DllmPeftLM.from_backbone(backbone, mc_num=32, batch_size=8, mc_estimator="adaptive")
    prompt = "Reverse: stone\nAnswer:"
    instances = [Instance("loglikelihood", {}, (prompt, option), index) for index, option in enumerate(OPTIONS)]
    scores = [score for score, _ in lm.loglikelihood(instances)]
    expected = adaptive_estimates(backbone, [lm._encode_pair(prompt, option) for option in OPTIONS], 32, 8)
    assert scores == pytest.approx([estimate.value for estimate in expected])
    with pytest.raises(Exception, match="mc_estimator must be reference or adaptive"):
        DllmPeftLM.from_backbone(backbone, mc_estimator="fastest")
    fast = DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,device=cpu,sampler_preset=fast,cache=prefix")
    assert fast.sampler_settings == {"threshold": 0.9, "cache": "prefix"}  # a typed setting wins over the preset
    alias = DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,device=cpu,sampler=fast")  # the name
    assert alias.sampler_settings == {"threshold": 0.9, "cache": "dual"}
    with pytest.raises(Exception, match="disagree"):
        DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,device=cpu,sampler=exact,sampler_preset=fast")


def test_the_stopping_rule_reads_stop_se_through_student_t_and_stops_hopeless_ties():
    from dllm_peft.diffusion.adaptive_likelihood import _critical, _Option, _Question, _settled

    assert _critical(2.0, 3) == pytest.approx(3.3068, abs=1e-3)  # scipy's t.ppf(Φ(2), 3)
    assert _critical(2.0, 1000) == pytest.approx(2.0, abs=0.01) and _critical(math.inf, 3) == math.inf

    def settled(differences: list[float], stop_se: float, futility_se: float, mc_num: int = 128) -> bool:
        """A two-option question whose per-sample differences (leader − runner-up) are `differences`."""
        leader = _Option(0, 8, values=[10.0 + value for value in differences])
        runner_up = _Option(1, 8, values=[10.0] * len(differences))
        return _settled(_Question(3, [leader, runner_up], torch.Generator(), 0.0, len(differences)), stop_se,
                        futility_se, mc_num)

    pairs = [1.0, 1.0, 0.2, 0.2, 1.6, 1.6, 0.6, 0.6]  # 4 pair means 1.0, 0.2, 1.6, 0.6: m = 0.85, s = 0.30, m/s = 2.8
    assert not settled(pairs, stop_se=2.0, futility_se=0)  # 2.8 < t₃ = 3.31: four pairs do not decide it
    assert settled(pairs * 8, stop_se=2.0, futility_se=0)  # 32 pairs, the same spread: m/s = 9.2 > t₃₁ = 2.1
    assert not settled(pairs, stop_se=2.0, futility_se=1e9)  # 8 of 128 samples: too few pairs to call a tie
    assert settled(pairs, stop_se=2.0, futility_se=5.8, mc_num=32)  # at 32 samples m/s would be 2.85·√4 = 5.7 < 5.8
    assert not settled(pairs, stop_se=2.0, futility_se=5.6, mc_num=32)
    assert not settled(pairs, stop_se=2.0, futility_se=0, mc_num=32)  # 0: never a tie


def test_the_leader_must_beat_every_rival_not_only_the_runner_up():
    """An intersection-union test: a rival behind the runner-up but with a wide spread still keeps the question open."""
    from dllm_peft.diffusion.adaptive_likelihood import _Option, _Question, _settled

    steady = [3.0, 3.2, 2.8, 3.0, 3.1, 2.9, 3.0, 3.0]  # the leader ahead of the runner-up by 3.0, tightly
    leader = _Option(0, 8, values=[10.0] * 8)
    runner_up = _Option(1, 8, values=[10.0 - value for value in steady])
    wide = _Option(2, 8, values=[10.0 - value for value in [-6.0, -6.0, 14.0, 14.0, -4.0, -4.0, 16.0, 16.0]])
    assert leader.mean() > runner_up.mean() > wide.mean()  # 10 > 7.0 > 5.0: the wide one is third by its mean

    def question(*options):
        return _Question(3, list(options), torch.Generator(), 0.0, 8)

    assert _settled(question(leader, runner_up), 1.25, 0.0, 128)  # beaten by ~40 standard errors
    assert not _settled(question(leader, runner_up, wide), 1.25, 0.0, 128)  # lead 5 over the wide one, s = 5.8


def test_the_cli_defaults_are_the_estimator_s_own():
    """config.py is a shared leaf and cannot import the estimator: its defaults are written twice, so check them."""
    from dllm_peft.config import EvalConfig
    from dllm_peft.diffusion.adaptive_likelihood import FUTILITY_SE, STOP_SE

    assert (EvalConfig().mc_stop_se, EvalConfig().mc_futility_se) == (STOP_SE, FUTILITY_SE)
