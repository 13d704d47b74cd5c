"""Measurements shared by the default-model recipe and its task benchmark.

* `masked_accuracy`: the denoiser's top-1 accuracy on held-out text with exactly round(λ·L) positions masked
  (the forward process of `dllm_peft.diffusion.schedule`, so λ means what it means in training).
* `generate`: greedy decoding with the project's sampler (`dllm_peft.diffusion.sampler`), one token per step.
* `task_exact_match`: the built-in task metric (exact match of the stripped response against `answer`).
"""

from __future__ import annotations

import random

import torch

from dllm_peft.config import SamplerConfig
from dllm_peft.data.tasks import task_records
from dllm_peft.diffusion.conditioning import noise_level as routed_noise_level
from dllm_peft.diffusion.sampler import sample
from dllm_peft.diffusion.schedule import forward_process, mask_counts_at
from dllm_peft.models.backbone import Backbone


def text_windows(text: bytes, count: int, length: int, seed: int) -> torch.Tensor:
    """`count` windows of `length` bytes at seeded random offsets of `text`. Returns (count, length) long."""
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(text) - length) for _ in range(count)]
    return torch.tensor([list(text[start : start + length]) for start in starts], dtype=torch.long)


@torch.no_grad()
def masked_accuracy(
    backbone: Backbone, windows: torch.Tensor, noise_level: float, seed: int = 0, batch_size: int = 16
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy (nats/token) at the masked positions of every window.

    Args:
        windows: (N, T) clean text; every position is eligible for masking (plain-text pretraining).
        noise_level: λ, the fraction of each window that is masked.
    """
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    cross_entropy = 0.0
    for start in range(0, windows.shape[0], batch_size):
        clean = windows[start : start + batch_size].to(backbone.device)  # (B, T)
        eligible = torch.ones_like(clean, dtype=torch.bool)
        counts = mask_counts_at(noise_level, eligible.sum(dim=1))  # (B,)
        noised = forward_process(clean, eligible, counts, backbone.mask_id, generator)
        with routed_noise_level(backbone.model, noised.noise_level):
            logits = backbone.logits(noised.input_ids).float()  # (B, T, V)
        targets, predicted = clean[noised.masked], logits[noised.masked]  # (N,), (N, V)
        correct += int((predicted.argmax(dim=-1) == targets).sum())
        total += int(targets.numel())
        cross_entropy += float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))
    return {"accuracy": correct / total, "cross_entropy": cross_entropy / total}


def generate(backbone: Backbone, prompts: list[str], gen_length: int) -> list[str]:
    """Greedy LLaDA decoding with the project's sampler: one block, one token committed per step."""
    config = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=gen_length)
    result = sample(backbone, [backbone.encode(prompt) for prompt in prompts], config)
    return [backbone.decode(tokens) for tokens in result.tokens]


def task_exact_match(
    backbone: Backbone, task: str, split: str = "test", count: int = 200, gen_length: int = 32, batch_size: int = 50
) -> dict[str, object]:
    """Exact match (stripped response == `answer`) on `count` records of a built-in task, with three examples."""
    records = task_records(task, split, count)
    outputs: list[str] = []
    for start in range(0, count, batch_size):
        chunk = records[start : start + batch_size]
        outputs += [text.strip() for text in generate(backbone, [record["prompt"] for record in chunk], gen_length)]
    hits = [output == record["answer"] for output, record in zip(outputs, records)]
    examples = [{"prompt": r["prompt"], "answer": r["answer"], "output": o} for r, o in zip(records[:3], outputs)]
    return {"exact_match": sum(hits) / count, "count": count, "examples": examples}
