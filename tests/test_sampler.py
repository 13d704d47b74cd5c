"""The sampler: token-for-token equal to a plain LLaDA reference loop, batch-invariant, and exact where it promises."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dllm_peft.adapters.base import inject
from dllm_peft.adapters.registry import build_adapter_config, get_method
from dllm_peft.config import SamplerConfig
from dllm_peft.diffusion.conditioning import NoiseRouter
from dllm_peft.diffusion.sampler import _step, sample
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import load_backbone, tiny_llada

from .conftest import randomize_adapter
from .llada_reference import reference_generate
from .tiny_checkpoints import TEXTS as CHECKPOINT_TEXTS
from .tiny_checkpoints import write_dream, write_roberta

PROMPTS = ["Uppercase: apple\nAnswer:", "Reverse: tiger\nAnswer:", "Question: 3 + 4 = ?\nAnswer: the"]


def nara_backbone(method: str = "nara"):
    backbone = tiny_llada(seed=0)
    adapter = build_adapter_config(method, rank=4, dropout=0.0)
    inject(backbone.model, adapter, get_method(method).layer_class, backbone.default_targets)
    randomize_adapter(backbone.model, seed=1, scale=0.3)  # a λ-dependent update that visibly changes the logits
    backbone.model.eval()
    return backbone


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + index) for index in range(count)]


def config(**settings) -> SamplerConfig:
    return SamplerConfig(**{"gen_length": 16, "steps": 16, "block_length": 16, "stop_at_eos": False, **settings})


# -- Must show 1: equality with the reference loop ------------------------------------------------------------------
REFERENCE_CASES = {
    "low_confidence": dict(),
    "low_confidence-blocks-uneven-steps": dict(gen_length=24, block_length=8, steps=9),
    "low_confidence-blocks-cfg-temperature": dict(block_length=8, steps=8, cfg_scale=1.5, temperature=0.7),
    "random": dict(remasking="random"),
    "random-cfg-temperature": dict(remasking="random", cfg_scale=0.5, temperature=1.0),
    "random-blocks-temperature": dict(remasking="random", block_length=4, steps=8, temperature=0.5),
}


@pytest.mark.parametrize("settings", REFERENCE_CASES.values(), ids=REFERENCE_CASES.keys())
def test_equals_the_reference_loop_token_for_token(backbone, settings):
    settings = config(**settings)
    prompt = backbone.encode(PROMPTS[0])
    result = sample(backbone, [prompt], settings, torch.Generator().manual_seed(7))
    expected = reference_generate(
        backbone, prompt, settings.gen_length, settings.steps, settings.block_length, settings.temperature,
        settings.cfg_scale, settings.remasking, torch.Generator().manual_seed(7),
    )
    assert torch.equal(result.canvas, expected)
    assert result.steps == [settings.steps]


@pytest.mark.parametrize("method", ["nara", "multilora"])
def test_equals_the_reference_loop_with_noise_aware_adapters_so_lambda_is_the_same(method):
    backbone, settings = nara_backbone(method), config(block_length=8, steps=8, cfg_scale=1.0, temperature=0.8)
    prompt = backbone.encode(PROMPTS[1])
    result = sample(backbone, [prompt], settings, torch.Generator().manual_seed(3))
    expected = reference_generate(
        backbone, prompt, 16, 8, 8, temperature=0.8, cfg_scale=1.0, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(result.canvas, expected)


def test_lambda_is_the_masked_fraction_of_each_response_per_step(monkeypatch):
    backbone, seen = nara_backbone(), []
    original = NoiseRouter.route

    def recording_route(router, level):
        seen.append(level.clone())
        original(router, level)

    monkeypatch.setattr(NoiseRouter, "route", recording_route)
    prompts = [backbone.encode(text) for text in PROMPTS[:2]]
    sample(backbone, prompts, config(gen_length=8, steps=4, block_length=4, cfg_scale=1.0))
    # 2 blocks × 2 steps, 2 tokens committed per step; CFG repeats λ for the unconditional copies
    expected = [[1.0] * 4, [0.75] * 4, [0.5] * 4, [0.25] * 4]
    assert [level.tolist() for level in seen] == expected


# -- Must show 2: a prompt's output does not depend on its batch ----------------------------------------------------
BATCH_CASES = {
    "greedy": dict(gen_length=16, steps=8, block_length=8),
    "random-cfg-temperature": dict(remasking="random", cfg_scale=1.0, temperature=0.9, block_length=8),
    "threshold-dual-cache": dict(threshold=0.02, cache="dual", block_length=8, temperature=0.5),
    "entropy-bound-prefix-cache": dict(entropy_bound=8.0, cache="prefix", block_length=4, steps=4, cache_refresh=2),
}


@pytest.mark.parametrize("settings", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_batched_output_equals_unbatched_output(settings):
    backbone = nara_backbone()
    settings = config(**settings)
    prompts = [backbone.encode(text) for text in PROMPTS]
    assert len({len(p) for p in prompts}) == 3  # different lengths: left padding is exercised
    batched = sample(backbone, prompts, settings, generators(3))
    for index, prompt in enumerate(prompts):
        alone = sample(backbone, [prompt], settings, generators(1, seed=index))
        assert batched.tokens[index] == alone.tokens[0]
        assert batched.steps[index] == alone.steps[0]
        assert torch.equal(batched.canvas[index, batched.prompt_length :], alone.canvas[0, alone.prompt_length :])


@pytest.mark.parametrize("writer", [write_dream, write_roberta], ids=["dream-shifted-logits", "roberta-absolute"])
def test_batch_invariance_holds_for_other_backbones(writer, tmp_path):
    writer(tmp_path / "model")
    backbone = load_backbone(str(tmp_path / "model"))
    prompts = [backbone.encode(text) for text in CHECKPOINT_TEXTS]
    # LLaDA's schedule (Dream checkpoints default to Dream's own, which runs prompt by prompt: tests/test_dream_sampler)
    settings = config(gen_length=8, steps=8, block_length=4, temperature=0.7, schedule="llada")
    batched = sample(backbone, prompts, settings, generators(len(prompts)))
    for index, prompt in enumerate(prompts):
        assert batched.tokens[index] == sample(backbone, [prompt], settings, generators(1, seed=index)).tokens[0]
    if backbone.shift_logits:  # Dream reads position i's logits at i - 1: not offered with a cache
        with pytest.raises(DllmPeftError, match="--cache dual needs a model that can reuse cached keys"):
            sample(backbone, prompts, dataclasses.replace(settings, cache="dual"))


# -- fast decoding --------------------------------------------------------------------------------------------------
def test_threshold_one_commits_one_token_per_step_like_the_full_schedule(backbone):
    prompt = backbone.encode(PROMPTS[0])
    fast = sample(backbone, [prompt], config(threshold=1.0, block_length=8, steps=2))
    slow = sample(backbone, [prompt], config(block_length=8, steps=16))
    assert torch.equal(fast.canvas, slow.canvas) and fast.steps == [16]


def test_a_loose_threshold_and_a_loose_entropy_bound_fill_a_block_per_step(backbone):
    prompt = backbone.encode(PROMPTS[0])
    for loose in (dict(threshold=1e-9), dict(entropy_bound=1e9)):
        result = sample(backbone, [prompt], config(block_length=8, steps=2, **loose))
        assert result.steps == [2] and result.forward_passes == 2
        assert (result.canvas != backbone.mask_id).all()


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_are_exact_when_cached_keys_cannot_go_stale(cache):
    # One layer: K/V depend only on each token, and tokens outside the block do not change during the block.
    backbone = tiny_llada(seed=2, n_layers=1)
    prompts = [backbone.encode(text) for text in PROMPTS]
    settings = config(gen_length=16, block_length=8, steps=8, temperature=0.6, cfg_scale=0.5)
    plain = sample(backbone, prompts, settings, generators(3))
    cached = sample(backbone, prompts, dataclasses.replace(settings, cache=cache), generators(3))
    assert torch.equal(plain.canvas, cached.canvas)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_the_lm_head_runs_on_the_current_block_only(backbone, cache):
    """Every pass asks for the block's logits alone (no (B, T, V) tensor for a large vocabulary)."""
    asked = []
    hook = backbone.model.register_forward_pre_hook(
        lambda module, args, kwargs: asked.append(kwargs.get("logits_to_keep")), with_kwargs=True)
    prompts = [backbone.encode(text) for text in PROMPTS]
    settings = config(gen_length=16, block_length=8, steps=16, cache=cache)
    try:
        result = sample(backbone, prompts, settings, generators(3))
    finally:
        hook.remove()
    assert len(asked) == result.forward_passes and all(isinstance(keep, torch.Tensor) for keep in asked)
    assert {keep.numel() for keep in asked} == {8}

@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_with_nara_a_refresh_every_step_makes_the_cache_exact(cache):
    backbone = nara_backbone()
    prompts = [backbone.encode(text) for text in PROMPTS]
    settings = config(gen_length=16, block_length=8, steps=8, threshold=0.02)
    plain = sample(backbone, prompts, settings, generators(3))
    refreshed = sample(backbone, prompts, dataclasses.replace(settings, cache=cache, cache_refresh=1), generators(3))
    assert torch.equal(plain.canvas, refreshed.canvas)


def test_a_cache_on_a_model_that_cannot_reuse_keys_is_a_clear_error(backbone):
    class NoCacheModel(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None, **kwargs):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    backbone.model = NoCacheModel(backbone.model)
    with pytest.raises(DllmPeftError, match="--cache prefix needs a model that can reuse cached keys"):
        sample(backbone, [backbone.encode("hi")], config(cache="prefix"))


# -- EOS ------------------------------------------------------------------------------------------------------------
def test_stopping_at_eos_keeps_the_tokens_and_saves_steps(backbone):
    with torch.no_grad():  # EOS takes over byte 27, which the random model likes from the 6th block on
        head = backbone.model.get_output_embeddings().weight
        head[backbone.eos_id] = head[27] * 1.05
    prompt = backbone.encode(PROMPTS[0])
    settings = config(gen_length=32, block_length=4, steps=16)
    full = sample(backbone, [prompt], settings)
    eos_positions = (full.canvas[0, full.prompt_length :] == backbone.eos_id).nonzero()
    assert len(eos_positions) > 0 and int(eos_positions[0]) >= 8
    stopped = sample(backbone, [prompt], dataclasses.replace(settings, stop_at_eos=True))
    first_block_with_eos = int(eos_positions[0]) // 4
    assert stopped.tokens == full.tokens
    assert stopped.steps == [2 * (first_block_with_eos + 1)]
    assert (stopped.canvas[0, stopped.prompt_length + 4 * (first_block_with_eos + 1) :] == backbone.eos_id).all()


def eos_favouring_logits(eos_id: int, vocab: int = 264) -> torch.Tensor:
    logits = torch.zeros(1, 3, vocab)
    logits[0, 0, eos_id] = 9.0  # position 0 is sure of EOS
    logits[0, 1, 65] = 5.0  # position 1 is fairly sure of "A"
    logits[0, 2, 66] = 3.0  # position 2 less so of "B"
    return logits


@pytest.mark.parametrize(
    "suppression, expected", [("none", [256, 257, 257]), ("confidence", [257, 65, 257]), ("logits", [257, 65, 257])]
)
def test_eos_suppression(suppression, expected):
    block = torch.full((1, 3), 257)
    settings = config(eos_suppression=suppression)
    committed = _step(block, eos_favouring_logits(256), [None], settings, 257, torch.tensor([256]), count=1)
    assert committed.tolist() == [expected]
    if suppression == "logits":  # EOS is not even a prediction any more
        everything = _step(block, eos_favouring_logits(256), [None], settings, 257, torch.tensor([256]), count=3)
        assert 256 not in everything.tolist()[0]


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompts, settings, message",
    [
        ([[]], {}, "prompt 1 is empty"),
        ([[65], [257]], {}, "prompt 2 contains the mask token"),
        ([[65] * 500], {"gen_length": 16}, "prompt 1 has 500 tokens, which with --gen-length 16 exceeds the model's"),
    ],
)
def test_prompts_the_sampler_cannot_run(backbone, prompts, settings, message):
    with pytest.raises(DllmPeftError, match=message):
        sample(backbone, prompts, config(**settings))
