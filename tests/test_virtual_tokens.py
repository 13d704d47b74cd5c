"""Prompt tuning, P-tuning and prefix tuning: virtual positions that callers never see."""

from __future__ import annotations

import pytest
import torch

from dllm_peft.adapters.base import find_model_adapter, inject
from dllm_peft.adapters.prefix import PrefixTuning, PrefixTuningConfig
from dllm_peft.adapters.prompt import (
    PromptTuning,
    PromptTuningConfig,
    PTuning,
    PTuningConfig,
)
from dllm_peft.config import SamplerConfig
from dllm_peft.diffusion.sampler import sample
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import tiny_llada

VIRTUAL = 5
PROMPT_AND_PREFIX = [
    (PromptTuningConfig(num_virtual_tokens=VIRTUAL), PromptTuning),
    (PrefixTuningConfig(num_virtual_tokens=VIRTUAL), PrefixTuning),
]


def with_adapter(config, adapter_class):
    torch.manual_seed(0)
    backbone = tiny_llada(seed=0)
    inject(backbone.model, config, adapter_class)
    return backbone


def canvas(length: int = 12, batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_prompt_tuning_equals_the_base_model_reading_the_virtual_tokens_first():
    """Virtual embeddings set to the embeddings of tokens t: logits(x) = base logits of [t; x] at x's positions."""
    backbone = with_adapter(PromptTuningConfig(num_virtual_tokens=VIRTUAL), PromptTuning)
    tokens = torch.tensor([10, 20, 30, 40, 50])
    adapter = find_model_adapter(backbone.model)
    with torch.no_grad():
        adapter.embeddings.copy_(backbone.model.get_input_embeddings().weight[tokens])
    input_ids = canvas()
    base = tiny_llada(seed=0)
    with torch.no_grad():
        expected = base.logits(torch.cat([tokens.expand(2, -1), input_ids], dim=1))[:, VIRTUAL:]
        assert backbone.logits(input_ids).shape == (2, 12, 264)
        torch.testing.assert_close(backbone.logits(input_ids), expected)
        positions = torch.arange(12).expand(2, -1)  # explicit RoPE positions (the sampler passes them)
        torch.testing.assert_close(backbone.logits(input_ids, position_ids=positions), expected)


def test_p_tuning_starts_exactly_where_prompt_tuning_starts():
    prompt = with_adapter(PromptTuningConfig(num_virtual_tokens=VIRTUAL), PromptTuning)
    encoded = with_adapter(PTuningConfig(num_virtual_tokens=VIRTUAL), PTuning)
    with torch.no_grad():
        assert torch.equal(prompt.logits(canvas()), encoded.logits(canvas()))


@pytest.mark.parametrize("config, adapter_class", PROMPT_AND_PREFIX, ids=["prompt", "prefix"])
def test_a_left_padded_sequence_gives_the_logits_it_gives_alone(config, adapter_class):
    backbone = with_adapter(config, adapter_class)
    input_ids = canvas()
    padded = torch.cat([torch.full((2, 3), backbone.eos_id), input_ids], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 12, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # real tokens count from 0, as the sampler does
    with torch.no_grad():
        alone = backbone.logits(input_ids, position_ids=torch.arange(12).expand(2, -1))
        together = backbone.logits(padded, mask, position_ids=positions)[:, 3:]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config, adapter_class", PROMPT_AND_PREFIX, ids=["prompt", "prefix"])
def test_a_cached_continuation_addresses_the_same_canvas_positions(config, adapter_class):
    """The sampler's KV-cache protocol: recomputing positions 4..9 against the cache of the same canvas is exact."""
    backbone = with_adapter(config, adapter_class)
    input_ids, mask = canvas(), torch.ones(2, 12, dtype=torch.long)
    positions = torch.arange(12).expand(2, -1)
    with torch.no_grad():
        full = backbone.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        assert full.logits.shape == (2, 12, 264) and full.past_key_values[0][0].shape[2] == VIRTUAL + 12
        part = backbone.logits(
            input_ids[:, 4:10], mask, position_ids=positions[:, 4:10],
            past_key_values=full.past_key_values, cache_positions=slice(4, 10),
        )  # fmt: skip
    torch.testing.assert_close(part, full.logits[:, 4:10], atol=1e-5, rtol=1e-5)


def test_sampling_never_generates_virtual_tokens_and_cached_sampling_runs():
    backbone = with_adapter(PrefixTuningConfig(num_virtual_tokens=VIRTUAL), PrefixTuning)
    prompts = [backbone.encode("Reverse: apple\nAnswer:")]
    for cache in ("none", "dual"):
        result = sample(backbone, prompts, SamplerConfig(gen_length=8, steps=4, block_length=8, cache=cache))
        assert result.canvas.shape == (1, len(prompts[0]) + 8)  # the canvas holds no virtual position
        assert not (result.canvas == backbone.mask_id).any()


def test_prefix_tuning_on_another_architecture_is_a_clear_error():
    backbone = tiny_llada(seed=0)
    backbone.model.config.model_type = "qwen2"
    with pytest.raises(DllmPeftError, match="prefix tuning needs LLaDA's KV-cache layout.*use --method prompt"):
        inject(backbone.model, PrefixTuningConfig(), PrefixTuning)
    assert find_model_adapter(backbone.model) is None and all(p.requires_grad for p in backbone.model.parameters())
