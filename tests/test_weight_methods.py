"""DoRA, NaRA-DoRA, HiRA, Multi-LoRA, BitFit and Houlsby: each one's defining identity, and ΔW for merge."""

from __future__ import annotations

import pytest
import torch

from dllm_peft.adapters.base import adapter_layers, inject, resolve_targets, unload
from dllm_peft.adapters.dora import DoraConfig, DoraLayer, row_norms
from dllm_peft.adapters.houlsby import HoulsbyConfig
from dllm_peft.adapters.lora import LoraConfig, LoraLayer
from dllm_peft.adapters.multilora import MultiLoraConfig, MultiLoraLayer, noise_bins
from dllm_peft.adapters.registry import METHODS, build_adapter_config
from dllm_peft.diffusion.conditioning import noise_level
from dllm_peft.models import tiny_llada

from .conftest import randomize_adapter


def adapted(method: str, **settings):
    torch.manual_seed(0)
    backbone = tiny_llada(seed=0)
    config = build_adapter_config(method, rank=4, dropout=0.0, **settings)
    inject(backbone.model, config, METHODS[method].layer_class, backbone.default_targets)
    return backbone


def logits(backbone, input_ids, level):
    with torch.no_grad(), noise_level(backbone.model, level):
        return backbone.logits(input_ids)


def merged_by_hand(backbone, level):
    """The base with W0 + delta_weight(λ) in every adapted layer (what `merge` writes)."""
    with torch.no_grad():
        deltas = {name: layer.delta_weight(level) for name, layer in adapter_layers(backbone.model).items()}
        unload(backbone.model)
        for name, delta in deltas.items():
            backbone.model.get_submodule(name).weight.add_(delta)
    return backbone


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.mergeable])
def test_merged_weights_give_the_adapter_logits(method, batch):
    backbone = adapted(method)
    randomize_adapter(backbone.model, scale=0.2)
    level = 0.4  # one λ for the whole batch: the only case a merged model can represent
    expected = logits(backbone, batch.input_ids, level)
    merged = logits(merged_by_hand(backbone, level), batch.input_ids, None)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-4)


def test_dora_row_norms_from_the_low_rank_route_equal_the_dense_norms():
    generator = torch.Generator().manual_seed(0)
    weight, left, right = (torch.randn(shape, generator=generator) for shape in ((48, 40), (3, 48, 4), (4, 40)))
    dense = torch.linalg.vector_norm(weight + left @ right, dim=-1)  # (3, 48)
    torch.testing.assert_close(row_norms(weight, (left, right)), dense)


def test_a_merged_dora_weight_has_the_learned_magnitude_as_row_norms():
    backbone = adapted("dora")
    randomize_adapter(backbone.model, scale=0.2)
    for layer in adapter_layers(backbone.model).values():
        merged = layer.base_layer.weight + layer.delta_weight()
        torch.testing.assert_close(torch.linalg.vector_norm(merged, dim=1), layer.magnitude.detach().abs())


def test_nara_dora_with_a_zero_hypernetwork_output_is_dora(batch):
    """Identity-plus-deviation: with F's last layer at zero, C(λ) = I and NaRA-DoRA is DoRA at every λ."""
    nara_dora, dora = adapted("nara-dora"), adapted("dora")
    with torch.no_grad():
        for name, layer in adapter_layers(nara_dora.model).items():
            layer.lora_B.normal_(0, 0.1)
            layer.magnitude.mul_(1.3)
            twin = adapter_layers(dora.model)[name]
            for tensor in ("lora_A", "lora_B", "magnitude"):
                getattr(twin, tensor).copy_(getattr(layer, tensor))
    for level in (0.1, 0.9):
        torch.testing.assert_close(logits(nara_dora, batch.input_ids, level), logits(dora, batch.input_ids, level))


def test_nara_dora_varies_with_the_noise_level_per_sample(batch):
    backbone = adapted("nara-dora")
    randomize_adapter(backbone.model, scale=0.2)
    levels = torch.tensor([0.1, 0.9, 0.5, 0.3])
    together = logits(backbone, batch.input_ids, levels)
    for row in (0, 1):
        alone = logits(backbone, batch.input_ids[row : row + 1], float(levels[row]))
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], logits(backbone, batch.input_ids, 0.9)[0])


def test_hira_is_a_hadamard_update_of_higher_rank_than_its_factors():
    backbone = adapted("hira")
    randomize_adapter(backbone.model, scale=0.2)
    layer = next(iter(adapter_layers(backbone.model).values()))
    low_rank = layer.lora_B @ layer.lora_A  # (out, in), rank 4
    torch.testing.assert_close(layer.delta_weight(), layer.base_layer.weight * low_rank)
    assert torch.linalg.matrix_rank(layer.delta_weight().detach()) > 4


def test_multilora_bins_follow_ceil_of_lambda_times_k():
    levels = torch.tensor([0.0, 0.1, 0.25, 0.2501, 0.5, 0.75, 0.76, 1.0])
    assert noise_bins(levels, 4).tolist() == [0, 0, 0, 1, 1, 2, 3, 3]  # 0-based; λ = 0 in the first bin
    assert noise_bins(torch.tensor([0.3, 0.7]), 10).tolist() == [2, 6]  # λ·K a hair above 3 and 7 in float32


def test_multilora_at_a_noise_level_is_the_lora_of_its_bin(batch):
    backbone = adapted("multilora", bins=4)
    randomize_adapter(backbone.model, scale=0.2)
    lora = tiny_llada(seed=0)
    inject(lora.model, LoraConfig(rank=4, dropout=0.0), LoraLayer, lora.default_targets)
    lora_layers = adapter_layers(lora.model)
    with torch.no_grad():
        for name, layer in adapter_layers(backbone.model).items():
            lora_layers[name].lora_A.copy_(layer.lora_A[2])  # bin 3 of 4 holds λ ∈ (0.5, 0.75]
            lora_layers[name].lora_B.copy_(layer.lora_B[2])
    torch.testing.assert_close(logits(backbone, batch.input_ids, 0.6), logits(lora, batch.input_ids, None))
    mixed = logits(backbone, batch.input_ids, torch.tensor([0.6, 0.1, 0.6, 1.0]))
    torch.testing.assert_close(mixed[[0, 2]], logits(lora, batch.input_ids, None)[[0, 2]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[1], logits(lora, batch.input_ids, None)[1])


def test_bitfit_adds_its_shift_to_every_linear_but_the_head(batch):
    backbone = adapted("bitfit")
    layers = adapter_layers(backbone.model)
    assert len(layers) == 2 * 7 and "model.transformer.ff_out" not in layers
    layer = layers["model.transformer.blocks.0.q_proj"]
    with torch.no_grad():
        layer.bias_shift.normal_()
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + layer.bias_shift)


def test_houlsby_adapts_the_attention_and_feed_forward_outputs():
    backbone = tiny_llada(seed=0)
    names = resolve_targets(backbone.model, HoulsbyConfig.default_targets)
    assert [name.split(".", 3)[-1] for name in names] == ["0.attn_out", "0.ff_out", "1.attn_out", "1.ff_out"]


def test_a_router_is_installed_exactly_for_layers_that_read_the_noise_level():
    """Multi-LoRA shares no module but reads λ, so it gets a router; DoRA gets none."""
    cases = ((DoraConfig(rank=2), DoraLayer, False), (MultiLoraConfig(rank=2), MultiLoraLayer, True))
    for config, layer_class, expected in cases:
        backbone = tiny_llada(seed=0)
        inject(backbone.model, config, layer_class, backbone.default_targets)
        assert hasattr(backbone.model, "dllm_peft_router") == expected
