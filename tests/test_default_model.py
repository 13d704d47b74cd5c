"""Tests for the embedded default model `dllm-tiny` (dllm_peft.models.default) and the default task."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from dllm_peft.config import DEFAULT_DATA, DEFAULT_MODEL, SamplerConfig, TrainConfig
from dllm_peft.data.tasks import DEFAULT_TASK, task_records
from dllm_peft.diffusion.sampler import sample
from dllm_peft.diffusion.schedule import forward_process, mask_counts_at
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import load_backbone, tiny_llada
from dllm_peft.models.default import (
    SHIPPED_DIR,
    WEIGHTS_FILE,
    load_checkpoint,
    shipped_recipe,
    write_checkpoint,
)

HELD_OUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def shipped():
    return load_backbone(DEFAULT_MODEL)


def test_defaults_point_at_the_shipped_model_and_the_builtin_task():
    config = TrainConfig()
    assert config.model == DEFAULT_MODEL == "dllm-tiny"
    assert config.data == DEFAULT_DATA == f"builtin:{DEFAULT_TASK}"


def test_shipped_model_is_small_and_loads_in_under_five_seconds():
    assert (SHIPPED_DIR / WEIGHTS_FILE).stat().st_size <= 20 * 2**20
    started = time.perf_counter()
    backbone = load_backbone(DEFAULT_MODEL)
    assert time.perf_counter() - started < 5.0
    parameters = list(backbone.model.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in parameters)  # nothing left on "meta"
    assert backbone.name == "dllm-tiny" and backbone.mask_id == 257 and backbone.eos_id == 256
    recipe = shipped_recipe()
    assert recipe["completed_steps"] == recipe["steps"] and "tinyshakespeare" in recipe["corpus"]


def test_checkpoint_round_trip_is_exact_up_to_bfloat16_storage(tmp_path):
    original = tiny_llada(seed=3).model
    write_checkpoint(original, tmp_path, recipe={"steps": 0})
    loaded = load_checkpoint(tmp_path, "round-trip")
    with torch.no_grad():  # the reference: the same model with every weight rounded to bfloat16
        for parameter in original.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float())
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=0)
    assert loaded.name == "round-trip" and loaded.model.config.d_model == original.config.d_model


def test_missing_checkpoint_file_is_a_one_sentence_error(tmp_path):
    write_checkpoint(tiny_llada(seed=0).model, tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(DllmPeftError, match="lacks model.safetensors"):
        load_checkpoint(tmp_path, "broken")


@pytest.mark.skipif(not HELD_OUT.is_file(), reason="needs ../shared/data/corpus (the held-out 10 % of the corpus)")
def test_shipped_model_denoises_held_out_text_far_above_chance(shipped):
    text = HELD_OUT.read_bytes()
    held_out = text[int(len(text) * 0.9) :]  # the recipe trains on the first 90 % only
    windows = torch.tensor([list(held_out[start : start + 128]) for start in range(0, 8 * 997, 997)])  # (8, 128)
    generator = torch.Generator().manual_seed(0)
    eligible = torch.ones_like(windows, dtype=torch.bool)
    noised = forward_process(windows, eligible, mask_counts_at(0.15, eligible.sum(dim=1)), shipped.mask_id, generator)
    with torch.no_grad():
        predicted = shipped.logits(noised.input_ids).argmax(dim=-1)  # (8, 128)
    accuracy = (predicted[noised.masked] == windows[noised.masked]).float().mean().item()
    assert accuracy > 0.25  # chance is ~1/65 for this text, a random init ~0; the recipe measured 0.356 on 64 windows


def test_base_model_does_not_solve_the_default_task(shipped):
    records = task_records(DEFAULT_TASK, "test", 16)
    config = SamplerConfig(gen_length=8, steps=8, block_length=8)
    result = sample(shipped, [shipped.encode(record["prompt"]) for record in records], config)
    outputs = [shipped.decode(tokens).strip() for tokens in result.tokens]
    assert sum(output == record["answer"] for output, record in zip(outputs, records)) <= 2  # 10 classes
