"""The training loop: explicit and short (nanoGPT style), masked-diffusion SFT of an adapter.

`train(config, on_progress)` loads the backbone, injects the adapter, runs AdamW with the reference settings
(β = (0.9, 0.95), weight decay 0.05, ε = 1e-8, linear schedule with 5 % warm-up, gradient clipping at 1.0) and
writes the adapter. It never prints: progress goes to the `on_progress` callback, which the CLI renders.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .adapters.base import inject, trainable_parameters
from .config import TrainConfig
from .data import Example, collate, prompt_response_pairs, read_records, tokenize_pairs
from .diffusion.loss import masked_diffusion_loss
from .errors import DllmPeftError
from .io import CONFIG_FILE, save_adapter
from .models import load_backbone
from .registry import build_adapter_config, get_method

WARMUP_RATIO = 0.05
GRAD_CLIP = 1.0


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    lr: float
    tokens_per_second: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    output: Path
    losses: list[float]
    trainable_parameters: int
    examples: int
    overlong: int


def learning_rate(step: int, max_steps: int, peak: float, warmup_ratio: float = WARMUP_RATIO) -> float:
    """Linear warm-up to `peak` over the first `warmup_ratio` of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(warmup_ratio * max_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def batches(examples: list[Example], batch_size: int, eos_id: int, rng: random.Random):
    """An endless stream of shuffled batches, reshuffled every epoch."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield collate([examples[i] for i in order[start : start + batch_size]], eos_id)


def _check_output(config: TrainConfig) -> Path:
    output = Path(config.output)
    if (output / CONFIG_FILE).exists() and not config.overwrite:
        raise DllmPeftError(f"{config.output!r} already holds an adapter; pass --overwrite or choose another --output")
    return output


def train(config: TrainConfig, on_progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Fine-tune an adapter on `config.data` and write it to `config.output`."""
    output = _check_output(config)
    method = get_method(config.method)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    backbone = load_backbone(config.model)
    pairs = prompt_response_pairs(read_records(config.data), config.prompt_field, config.response_field)
    examples, report = tokenize_pairs(pairs, backbone, config.max_length, config.overlong)

    adapter_config = build_adapter_config(
        config.method, rank=config.rank, eta=config.eta, dropout=config.dropout, target_modules=config.target_modules
    )
    inject(backbone.model, adapter_config, method.layer_class, backbone.default_targets)
    parameters = trainable_parameters(backbone.model)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.05, eps=1e-8)
    backbone.model.train()

    stream = batches(examples, config.batch_size, backbone.eos_id, rng)
    losses: list[float] = []
    for step in range(config.max_steps):
        started = time.perf_counter()
        lr = learning_rate(step, config.max_steps, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, tokens = 0.0, 0
        for _ in range(config.grad_accum):
            batch = next(stream)
            out = masked_diffusion_loss(
                backbone, batch.input_ids, batch.response_mask, batch.attention_mask, generator=generator
            )
            (out.loss / config.grad_accum).backward()
            step_loss += out.loss.item() / config.grad_accum
            tokens += batch.tokens
        if not math.isfinite(step_loss):
            raise DllmPeftError(f"the loss became {step_loss} at step {step + 1}; lower --lr (no adapter was written)")
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if on_progress is not None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            on_progress(TrainProgress(step + 1, config.max_steps, step_loss, lr, tokens / elapsed))

    backbone.model.eval()
    training = {"steps": config.max_steps, "data": config.data, "seed": config.seed, "lr": config.lr}
    save_adapter(backbone, output, extra={"training": training})
    return TrainResult(output, losses, sum(p.numel() for p in parameters), len(examples), report.overlong)
