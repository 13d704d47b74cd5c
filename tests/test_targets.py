"""Target-module matching: suffixes, regexes, the LM head, and typos that PEFT would silently ignore."""

from __future__ import annotations

import pytest

from dllm_peft.adapters.base import adapter_layers, inject, resolve_targets
from dllm_peft.adapters.lora import LoraConfig, LoraLayer
from dllm_peft.errors import DllmPeftError


def test_suffixes_select_every_block(backbone):
    names = resolve_targets(backbone.model, ["q_proj", "attn_out"])
    assert names == [
        "model.transformer.blocks.0.q_proj",
        "model.transformer.blocks.0.attn_out",
        "model.transformer.blocks.1.q_proj",
        "model.transformer.blocks.1.attn_out",
    ]


def test_regex_selects_by_full_name(backbone):
    assert resolve_targets(backbone.model, [r".*blocks\.1\.(k|v)_proj"]) == [
        "model.transformer.blocks.1.k_proj",
        "model.transformer.blocks.1.v_proj",
    ]


def test_the_lm_head_is_not_adapted_by_the_shared_suffix(backbone):
    names = resolve_targets(backbone.model, ["ff_out"])
    assert "model.transformer.ff_out" not in names and len(names) == 2


def test_the_lm_head_is_adapted_when_named_explicitly(backbone):
    assert resolve_targets(backbone.model, ["transformer.ff_out"]) == ["model.transformer.ff_out"]


def test_a_target_that_matches_nothing_lists_the_linear_layers(backbone):
    with pytest.raises(DllmPeftError, match=r"\['qproj'\] match no linear layer.*q_proj"):
        inject(backbone.model, LoraConfig(target_modules=("qproj",)), LoraLayer)
    assert not adapter_layers(backbone.model)


def test_injecting_twice_is_an_error(backbone):
    inject(backbone.model, LoraConfig(rank=2), LoraLayer, backbone.default_targets)
    with pytest.raises(DllmPeftError, match="already carries an adapter"):
        inject(backbone.model, LoraConfig(rank=2), LoraLayer, backbone.default_targets)
