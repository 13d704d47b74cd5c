"""`benchmarks/flops.py`: the FLOP count of a training step and of a forward, by hand on a tiny config and against
torch's own counter (`FlopCounterMode`, with the math SDPA kernel so that attention's products are visible to it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import (  # noqa: E402
    AdapterShape,
    FlopMeter,
    forward_flops,
    lora,
    nara,
    shape_of,
    training_step_flops,
)
from dllm_peft.adapters.base import inject  # noqa: E402
from dllm_peft.adapters.registry import build_adapter_config, get_method  # noqa: E402
from dllm_peft.diffusion.loss import masked_diffusion_loss  # noqa: E402
from dllm_peft.models import tiny_llada  # noqa: E402
from dllm_peft.models.llada import LLaDAConfig, tiny_llada_config  # noqa: E402


def test_a_training_step_with_lora_matches_the_hand_count():
    # tiny LLaDA: d 64, 4 heads of 16, 2 layers, gated MLP 128, 264 head rows; 8 tokens; LoRA rank 4 on q, k, v, o
    shape = shape_of(tiny_llada_config())
    per_layer = 4 * 2 * 64 * 64 + 4 * 8 * 16 * 4 + 3 * 2 * 64 * 128  # projections, attention, MLP: 83 968
    head = 2 * 64 * 264
    assert forward_flops(shape, 8) == 8 * (2 * per_layer + head) == 8 * 201_728
    adapters = 4 * 2 * 4 * (64 + 64)  # per layer: A and B of four projections
    forward = 2 * per_layer + head + 2 * adapters  # 209 920 per token
    # backward, per token. Layer 0: q, k, v get no input gradient (frozen embeddings below them); their adapters get
    # dB, d(A x) and dA (3 × 512 each); attention 4 products of 1024; o: input gradient 8192 + its adapter 2048; MLP.
    layer0 = 3 * 1536 + 4 * 1024 + 8192 + 2048 + 3 * 2 * 64 * 128
    layer1 = 3 * 8192 + 3 * 2048 + 4 * 1024 + 8192 + 2048 + 3 * 2 * 64 * 128  # everything needs a gradient
    backward = layer0 + layer1 + head  # the head's weight is frozen: its input gradient only
    step = training_step_flops(shape, 8, AdapterShape(4))
    assert step["forward"] == 8 * forward and step["backward"] == 8 * backward == 8 * 196_096
    assert step["total"] == 8 * 406_016 and step["hypernetwork"] == 0


def adapted(method: str, rank: int = 4):
    backbone = tiny_llada(seed=0)
    config = build_adapter_config(method, rank=rank, dropout=0.0)
    inject(backbone.model, config, get_method(method).layer_class, backbone.default_targets)
    backbone.model.train()
    return backbone


@pytest.mark.parametrize("method", ["lora", "nara"])
def test_a_training_step_matches_torch_s_flop_counter(method):
    backbone = adapted(method)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 4:] = True
    counts = torch.tensor([3, 6])  # two distinct noise levels: NaRA runs F twice
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        masked_diffusion_loss(backbone, ids, response, mask_counts=counts).loss.backward()
    adapter = lora(4) if method == "lora" else nara(4)
    expected = training_step_flops(shape_of(backbone.model.config), 12, adapter, batch=2, noise_levels=2)
    assert counter.get_total_flops() == expected["total"]


def test_the_meter_counts_cached_and_head_only_forwards_like_torch():
    backbone = adapted("lora")
    backbone.model.eval()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    shape = shape_of(backbone.model.config)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        cache = backbone.model(ids, use_cache=True).past_key_values
        with FlopMeter(backbone.model, shape, lora(4)) as meter, FlopCounterMode(display=False) as counter:
            backbone.logits(ids, keep=torch.arange(8, 12))  # no cache, head on 4 positions
            backbone.logits(ids[:, 8:12], keep=torch.arange(4), past_key_values=cache, cache_positions=slice(8, 12))
    assert meter.calls == 2
    assert meter.flops == counter.get_total_flops()
    assert meter.flops == forward_flops(shape, 16, 16, 4, lora(4)) + forward_flops(shape, 4, 16, 4, lora(4))


def test_llada_8b_shape_and_per_token_figures():
    shape = shape_of(LLaDAConfig())
    assert (shape.d_model, shape.n_layers, shape.mlp_width, shape.vocab) == (4096, 32, 12288, 126464)
    # the dense rule of thumb 2 × parameters (weights of blocks and head) plus attention
    parameters = 32 * (4 * 4096**2 + 3 * 4096 * 12288) + 4096 * 126464
    assert forward_flops(shape, 512) / 512 == 2 * parameters + 32 * 4 * 512 * 4096
    step = training_step_flops(shape, 512, nara(32))
    assert 1.9 < step["total"] / step["forward"] < 2.05  # frozen base: about twice a forward, not three times


def test_dream_and_masked_lm_forwards_match_torch_s_flop_counter():
    from transformers import BertConfig, BertForMaskedLM

    from dllm_peft.models.dream import DreamConfig, DreamModel

    dream = DreamModel(DreamConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=300)).eval()
    bert = BertForMaskedLM(BertConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=300)).eval()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(2))
    for model in (dream, bert):
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(input_ids=ids)
        assert counter.get_total_flops() == forward_flops(shape_of(model.config), 10, batch=2), type(model).__name__
