"""The data of a training run and its validation: held-out loss at random noise levels and at fixed λ.

`load_training_data` turns the run's settings into tokenised train and validation examples: the validation set is
`--val-data` when given, else the data's own validation split (built-in tasks, dataset directories that have one),
else `--val-size` examples held out of `--data` at random (fixed by the seed).

`validate` scores the held-out examples with the masked-diffusion loss twice over: once at noise levels drawn as in
training, and once at each fixed λ of `--val-noise-levels` (exactly round(λ·L) response tokens masked, through
`schedule.mask_counts_at`). The masks are seeded by the example chunk, so every validation of a run sees the same
masks and the curves compare steps, not noise. Written per evaluation, the per-λ losses show where along the
denoising trajectory an adapter helps (NaRA's claim is that it helps differently at different λ).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate import Accelerator

from ..config import TrainConfig
from ..errors import DllmPeftError
from ..data.records import (
    Example,
    LengthReport,
    collate,
    derived_seed,
    fingerprint,
    has_split,
    hold_out,
    prompt_response_pairs,
    read_records,
    tokenize_pairs,
)
from ..diffusion.loss import masked_diffusion_loss
from ..diffusion.schedule import mask_counts_at
from ..models.backbone import Backbone
from .sharding import gather_root, is_sharded


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train: list[Example]
    validation: list[Example]
    validation_origin: str  # where the validation examples come from, for the report
    lengths: LengthReport  # of the training data
    fingerprint: str  # of the training examples: a resumed run checks its data did not change


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    step: int
    loss: float  # noise levels drawn as in training
    by_noise_level: dict[float, float]  # λ → loss with exactly round(λ·L) tokens masked
    examples: int

    def metrics(self) -> dict[str, Any]:
        """The record written to metrics.jsonl (JSON keys are strings)."""
        by_level = {f"{level:g}": loss for level, loss in self.by_noise_level.items()}
        return {"loss": self.loss, "loss_by_noise_level": by_level, "examples": self.examples}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ValidationReport:
        """From `dataclasses.asdict` output after a JSON round trip (keys of `by_noise_level` became strings)."""
        by_level = {float(level): float(loss) for level, loss in values["by_noise_level"].items()}
        return cls(int(values["step"]), float(values["loss"]), by_level, int(values["examples"]))


def load_training_data(config: TrainConfig, backbone: Backbone) -> TrainingData:
    """Read, tokenise and split the data of a run; every problem is a one-sentence `DllmPeftError`."""

    def examples_of(source: str, split: str) -> tuple[list[Example], LengthReport]:
        pairs = prompt_response_pairs(read_records(source, split), config.prompt_field, config.response_field, source)
        for number, (_, response) in enumerate(pairs, start=1):
            if not response.strip():  # no response token to unmask: the example teaches nothing and its loss is 0/0
                raise DllmPeftError(f"record {number} of {source} has an empty response; give it text or remove it")
        return tokenize_pairs(pairs, backbone, config.max_length, config.overlong, config.chat_template)

    train, lengths = examples_of(config.data, "train")
    if config.val_size == 0:
        validation, origin = [], "none (--val-size 0)"
    elif config.val_data:
        split = "validation" if has_split(config.val_data, "validation") else "train"
        validation, origin = examples_of(config.val_data, split)[0][: config.val_size], config.val_data
    elif has_split(config.data, "validation"):
        validation = examples_of(config.data, "validation")[0][: config.val_size]
        origin = f"the validation split of {config.data}"
    else:
        train, validation = hold_out(train, config.val_size, derived_seed(config.seed, "hold-out"))
        origin = f"held out of {config.data}" if validation else "none (too little data to hold any out)"
    return TrainingData(train, validation, origin, lengths, fingerprint(train))


@torch.no_grad()
def validate(
    backbone: Backbone,
    examples: list[Example],
    config: TrainConfig,
    accelerator: Accelerator,
    pad_to: int | None,
    step: int,
) -> ValidationReport:
    """The held-out loss of the adapter in `backbone.model` now; processes share the chunks and sum the results.

    Args:
        backbone: the unwrapped backbone. Unsharded, its forward needs no collective and processes may run unequal
            numbers of chunks; under FSDP every forward gathers weights from all processes, so each runs the same
            number (surplus turns re-run chunk 0 and drop the result).
        pad_to: EOS padding length of a batch, as in training (None: the longest example of the chunk).
    """
    levels = (None, *config.noise_levels)  # None: λ drawn as in training
    device = accelerator.device
    sums = torch.zeros(len(levels), dtype=torch.float64, device=device)  # (1 + levels,) Σ per-example loss
    chunks = [examples[start : start + config.batch_size] for start in range(0, len(examples), config.batch_size)]
    was_training = backbone.model.training
    backbone.model.eval()  # no dropout
    processes = accelerator.num_processes
    turns = -(-len(chunks) // processes) * processes if is_sharded(backbone.model) else len(chunks)
    try:
        for index in range(accelerator.process_index, turns, processes):
            surplus = index >= len(chunks)
            batch = collate(chunks[0 if surplus else index], backbone.eos_id, pad_to)
            input_ids, response_mask = batch.input_ids.to(device), batch.response_mask.to(device)
            lengths = response_mask.sum(dim=1)  # (B,)
            for column, level in enumerate(levels):
                generator = torch.Generator(device=device).manual_seed(
                    derived_seed(config.seed, "validation", index, column)
                )
                counts = None if level is None else mask_counts_at(level, lengths)
                with accelerator.autocast():
                    gather_root(backbone.model)
                    out = masked_diffusion_loss(
                        backbone, input_ids, response_mask, generator=generator, mask_counts=counts
                    )
                if not surplus:
                    sums[column] += out.per_example.double().sum()
    finally:
        backbone.model.train(was_training)
    means = (accelerator.reduce(sums) / len(examples)).tolist()  # (1 + levels,)
    by_level = dict(zip(config.noise_levels, means[1:]))
    return ValidationReport(step, means[0], by_level, len(examples))
