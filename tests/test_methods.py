"""The method zoo: every registered method trains (its held-out loss drops in 20 steps) and has the parameter count
its formula says, on the tiny LLaDA (d = 64, 2 blocks, 4 heads, MLP 128, 264 embedding rows)."""

from __future__ import annotations

import pytest
import torch

from dllm_peft.adapters.base import inject, trainable_parameters
from dllm_peft.adapters.registry import METHODS, build_adapter_config
from dllm_peft.data.records import collate, prompt_response_pairs, tokenize_pairs
from dllm_peft.data.tasks import task_records
from dllm_peft.diffusion.loss import masked_diffusion_loss
from dllm_peft.diffusion.schedule import mask_counts_at
from dllm_peft.models import tiny_llada

from .conftest import make_batch

RANK = 4
WIDTH, BLOCKS, MLP, ROWS = 64, 2, 128, 264
ATTENTION_TARGETS = 4 * BLOCKS  # q, k, v, attn_out per block, each WIDTH → WIDTH
LORA = ATTENTION_TARGETS * RANK * (WIDTH + WIDTH)
HYPERNETWORK = (64 * 256 + 256) + (256 * 512 + 512) + (512 * RANK**2 + RANK**2)  # NaRA's F: 64 → 256 → 512 → r²
VIRTUAL = 32  # default number of virtual tokens
TRAJECTORY = 2 * (64 + 32 + 8) * (WIDTH + 64 + WIDTH)  # k modules × Σ_phase r (W_B: d + e in, W_A: d out)
BLOCK_LINEARS_OUT = 4 * WIDTH + 2 * MLP + WIDTH  # q, k, v, attn_out, ff_proj, up_proj, ff_out
MODEL = 2 * ROWS * WIDTH + BLOCKS * (4 * WIDTH**2 + 3 * WIDTH * MLP + 2 * WIDTH) + WIDTH

# The trainable-parameter count of each method at rank 4 with default settings, written from its definition.
FORMULAS = {
    "lora": LORA,
    "nara": LORA + HYPERNETWORK,
    "nara-c": LORA + RANK**2,
    "dora": LORA + ATTENTION_TARGETS * WIDTH,  # + one magnitude per output row
    "nara-dora": LORA + ATTENTION_TARGETS * WIDTH + HYPERNETWORK,
    "hira": LORA,
    "multilora": 4 * LORA,  # K = 4 bins
    "prompt": VIRTUAL * WIDTH,
    "p-tuning": VIRTUAL * WIDTH + 3 * (WIDTH * WIDTH + WIDTH),  # + the 3-layer encoder of hidden width d
    "prefix": 2 * BLOCKS * VIRTUAL * WIDTH,  # keys and values per block, 4 kv heads × 16 = d wide
    "houlsby": 2 * BLOCKS * (WIDTH * RANK + RANK + RANK * WIDTH + WIDTH),  # after attn_out and ff_out (both d out)
    "bitfit": BLOCKS * BLOCK_LINEARS_OUT,
    "full": MODEL,
    "trajectory": TRAJECTORY,
    "trajectory-router": 2 * TRAJECTORY + (WIDTH * 512 + 512) + (512 * 2 + 2),  # M = 2 tasks + the router MLP
}


def test_every_registered_method_has_a_formula():
    assert set(FORMULAS) == set(METHODS)


def adapted(method: str):
    torch.manual_seed(0)
    backbone = tiny_llada(seed=0)
    config = build_adapter_config(method, rank=RANK, dropout=0.0)
    inject(backbone.model, config, METHODS[method].layer_class, backbone.default_targets)
    return backbone


def validation_batch(backbone, count: int = 4):
    pairs = prompt_response_pairs(task_records("uppercase", "validation", count))
    return collate(tokenize_pairs(pairs, backbone, max_length=128)[0], backbone.eos_id)


def held_out_loss(backbone, batch) -> float:
    """The loss at λ = 0.2, 0.5, 0.8 with fixed masks: the same positions before and after training."""
    generator = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for level in (0.2, 0.5, 0.8):
            counts = mask_counts_at(level, batch.response_mask.sum(dim=1))
            out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, None, generator, counts)
            total += out.loss.item() / 3
    return total


@pytest.mark.parametrize("method", sorted(METHODS))
def test_trainable_parameters_equal_the_formula(method):
    backbone = adapted(method)
    assert sum(p.numel() for p in trainable_parameters(backbone.model)) == FORMULAS[method]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_twenty_steps_lower_the_held_out_loss(method):
    backbone = adapted(method)
    train, held_out = make_batch(backbone, 4), validation_batch(backbone)
    regularization = METHODS[method].regularization
    optimizer = torch.optim.AdamW(trainable_parameters(backbone.model), lr=1e-2)
    before = held_out_loss(backbone, held_out)
    generator = torch.Generator().manual_seed(0)
    backbone.model.train()
    for _ in range(20):
        loss = masked_diffusion_loss(backbone, train.input_ids, train.response_mask, generator=generator).loss
        if regularization is not None:
            loss = loss + regularization(backbone.model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    backbone.model.eval()
    after = held_out_loss(backbone, held_out)
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_inspect_reports_the_formula(method, tmp_path):
    """What `dllm-peft inspect ADAPTER --model tiny-llada` prints as the trainable count is the formula."""
    summary = pytest.importorskip("dllm_peft.adapters.summary")
    from dllm_peft.adapters.files import save_adapter

    save_adapter(adapted(method), tmp_path / "adapter")
    parts = summary.adapter_in_backbone(tiny_llada(seed=0), tmp_path / "adapter")
    assert parts.trainable_parameters == FORMULAS[method]
