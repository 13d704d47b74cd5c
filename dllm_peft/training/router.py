"""Training the router of LoRA-Diffusion's multi-task composition (§3.4) on separately trained task adapters.

`adapters/router.py` holds the composition itself (the router, the mixed residuals); this module reads trained
adapters from disk and teaches the router to recognise each example's task, on batches shaped like the sampler's
canvas. `benchmarks/trajectory_router/` runs it end to end.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters.base import find_model_adapter
from ..adapters.files import read_adapter
from ..adapters.router import TrajectoryRouterAdapter, compose_trajectory_adapters
from ..data.records import Batch, Example
from ..diffusion.conditioning import noise_level
from ..diffusion.schedule import draw_mask_counts, forward_process
from ..errors import DllmPeftError


def compose_from_files(backbone, paths: list[str | Path]) -> TrajectoryRouterAdapter:
    """Read the trained trajectory adapters at `paths` and inject their composition into `backbone.model`."""
    if len(paths) < 2:
        raise DllmPeftError(f"composition needs at least two trajectory adapters, got {len(paths)}")
    return compose_trajectory_adapters(backbone, paths, [read_adapter(path) for path in paths])


def router_batch(
    task_examples: list[list[Example]], response_length: int, eos_id: int
) -> tuple[Batch, torch.Tensor]:
    """A labelled router-training batch shaped like the sampler's canvas.

    Every row is left padding (attention mask 0), the prompt, and exactly `response_length` response positions (the
    answer cut or EOS-padded), as a sampled canvas is the prompt and `gen_length` masks. In a bidirectional model the
    prompt's hidden states depend on how many masked positions follow, so a router trained on other lengths (say,
    batches padded to their longest example) learns length as a task cue and misroutes at sampling time.

    Args:
        task_examples: per task (in the composition's order), the examples this batch holds of it.
    Returns:
        The batch, (B, prompt + response_length), and each row's task index, (B,) long.
    """
    rows = [(example, task) for task, examples in enumerate(task_examples) for example in examples]
    prompt_length = max(len(example.prompt_ids) for example, _ in rows)
    width = prompt_length + response_length
    input_ids = torch.full((len(rows), width), eos_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (example, _) in enumerate(rows):
        response = list(example.response_ids[:response_length])
        tokens = [*example.prompt_ids, *response, *[eos_id] * (response_length - len(response))]
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens)
        attention_mask[row, width - len(tokens) :] = 1
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    response_mask[:, prompt_length:] = True
    labels = torch.tensor([task for _, task in rows])
    return Batch(input_ids, response_mask, attention_mask), labels


def train_router(
    backbone, batches: Iterable[tuple[Batch, torch.Tensor]], steps: int, lr: float = 1e-3, generator=None
) -> list[float]:
    """Teach the router of the composition in `backbone.model` to recognise each example's task.

    The task adapters were trained one task each, so every training example's task is known: the router is trained
    by cross-entropy between its weights and that task, on inputs noised as while sampling: half the rows with the
    whole response masked (the first step, the instruction alone), half with a random share as in training. The task
    adapters and the base stay frozen. The paper's alternative, joint multi-task training of modules and router on
    the masked-diffusion loss, is `dllm-peft train --method trajectory-router`; on separately trained adapters that
    loss lets the router favour whichever adapter lowers the loss most overall rather than the input's task.

    Args:
        batches: (batch, task) pairs; task (B,) long is each row's index into the composed adapters. Build them with
            `router_batch` (tasks mixed within a batch, canvases shaped as the sampler's), or the router may learn
            the batch or canvas length as a task cue.
    Returns:
        The cross-entropy of every step.
    """
    adapter = find_model_adapter(backbone.model)
    if not isinstance(adapter, TrajectoryRouterAdapter):
        raise DllmPeftError("the model carries no trajectory-router composition; compose_from_files makes one")
    optimizer = torch.optim.AdamW(adapter.task_router.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    for _, (batch, task) in zip(range(steps), batches):
        lengths = batch.response_mask.sum(dim=1)  # (B,)
        # Half the rows fully masked: the first sampling step shows the instruction alone (λ = 1, Algorithm 1's
        # Enc(c)), which the training draw k = round(t·L) almost never produces.
        whole = torch.rand(lengths.shape, generator=generator, device=lengths.device) < 0.5
        counts = torch.where(whole, lengths, draw_mask_counts(lengths, generator))
        noised = forward_process(batch.input_ids, batch.response_mask, counts, backbone.mask_id, generator)
        with adapter.recording() as weights, noise_level(backbone.model, noised.noise_level):
            backbone.logits(noised.input_ids, batch.attention_mask, noise_level=noised.noise_level)
        loss = F.nll_loss(weights[0].clamp(min=1e-12).log(), task.to(weights[0].device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses
