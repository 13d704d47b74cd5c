"""Shared fixtures: tiny models built in code, fixed seeds, CPU only."""

from __future__ import annotations

import os

import pytest
import torch

from dllm_peft.data.records import collate, prompt_response_pairs, tokenize_pairs
from dllm_peft.data.tasks import task_records
from dllm_peft.models import tiny_llada

# Tiny models gain nothing from a second thread, and thread contention on a busy 2-core machine made them many
# times slower; child processes started by tests inherit the variable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def backbone():
    return tiny_llada(seed=0)


def make_batch(backbone, count: int = 4, task: str = "uppercase"):
    pairs = prompt_response_pairs(task_records(task, "train", count))
    examples, _ = tokenize_pairs(pairs, backbone, max_length=128)
    return collate(examples, backbone.eos_id)


@pytest.fixture
def batch(backbone):
    return make_batch(backbone)


def randomize_adapter(model, seed: int = 1, scale: float = 0.1) -> None:
    """Give every adapter tensor a random value, so identities are tested away from the zero-initialised start."""
    from dllm_peft.adapters.base import adapter_state_dict

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in adapter_state_dict(model).items():
            if tensor.is_floating_point() and not name.endswith("frequencies"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
