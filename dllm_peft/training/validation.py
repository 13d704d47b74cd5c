"""The data of a training run and its validation: held-out loss at random noise levels and at fixed λ.

`load_training_data` turns the run's settings into tokenised train and validation examples: the validation set is
`--val-data` when given, else the data's own validation split (built-in tasks, dataset directories that have one),
else `--val-size` examples held out of `--data` at random (fixed by the seed).

`validate` scores the held-out examples with the masked-diffusion loss twice over: once at noise levels drawn as in
training, and once at each fixed λ of `--val-noise-levels` (exactly round(λ·L) response tokens masked, through
`schedule.mask_counts_at`; each row is labelled with the mean λ it actually routed: k / L under `--noise-draw grid`,
which differs from the nominal λ when L is small, the nominal λ itself under `continuous`). The masks are seeded per example and the response region of an example does not depend
on its chunk (under `--padding longest` every example is padded to the longest validation example), so every
validation of a run sees the same masks, the curves compare steps, not noise, and the figures do not depend on
`--batch-size`. Written per evaluation, the per-λ losses show where along the
denoising trajectory an adapter helps (NaRA's claim is that it helps differently at different λ).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate import Accelerator

from ..config import TrainConfig
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
from ..errors import DllmPeftError
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
    by_noise_level: dict[float, float]  # nominal λ → loss with exactly round(λ·L) tokens masked
    examples: int
    routed: dict[float, float] = dataclasses.field(default_factory=dict)  # nominal λ → mean λ = k / L routed

    def metrics(self) -> dict[str, Any]:
        """The record written to metrics.jsonl (JSON keys are strings)."""
        by_level = {f"{level:g}": loss for level, loss in self.by_noise_level.items()}
        routed = {f"{level:g}": value for level, value in self.routed.items()}
        return {"loss": self.loss, "loss_by_noise_level": by_level, "routed_noise_level": routed,
                "examples": self.examples}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ValidationReport:
        """From `dataclasses.asdict` output after a JSON round trip (keys of `by_noise_level` became strings)."""
        by_level = {float(level): float(loss) for level, loss in values["by_noise_level"].items()}
        routed = {float(level): float(value) for level, value in values.get("routed", {}).items()}
        return cls(int(values["step"]), float(values["loss"]), by_level, int(values["examples"]), routed)


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


def batch_padding(config: TrainConfig) -> dict[str, int | None]:
    """The keyword arguments of `collate` / `response_regions` that `--padding` asks for."""
    return {
        "pad_to": config.max_length if config.padding == "max_length" else None,
        "canvas": config.canvas_length,
        "max_length": config.max_length,
    }


@torch.no_grad()
def validate(
    backbone: Backbone,
    examples: list[Example],
    config: TrainConfig,
    accelerator: Accelerator,
    step: int,
) -> ValidationReport:
    """The held-out loss of the adapter in `backbone.model` now; processes share the chunks and sum the results.

    Args:
        backbone: the unwrapped backbone. Unsharded, its forward needs no collective and processes may run unequal
            numbers of chunks; under FSDP every forward gathers weights from all processes, so each runs the same
            number (surplus turns re-run chunk 0 and drop the result).
    """
    levels = (None, *config.noise_levels)  # None: λ drawn as in training
    device = accelerator.device
    sums = torch.zeros(2, len(levels), dtype=torch.float64, device=device)  # (loss, λ) × (1 + levels) Σ per example
    padding = batch_padding(config)
    if padding["pad_to"] is None and padding["canvas"] is None:  # longest: the longest example of the set, not chunk
        padding["pad_to"] = max(len(example) for example in examples)
    chunks = [examples[start : start + config.batch_size] for start in range(0, len(examples), config.batch_size)]
    was_training = backbone.model.training
    backbone.model.eval()  # no dropout
    processes = accelerator.num_processes
    turns = -(-len(chunks) // processes) * processes if is_sharded(backbone.model) else len(chunks)
    try:
        for index in range(accelerator.process_index, turns, processes):
            surplus = index >= len(chunks)
            batch = collate(chunks[0 if surplus else index], backbone.eos_id, **padding)
            input_ids, response_mask = batch.input_ids.to(device), batch.response_mask.to(device)
            lengths = response_mask.sum(dim=1)  # (B,)
            attention_mask = batch.attention_mask.to(device)
            first = (0 if surplus else index) * config.batch_size  # the chunk's first example in the validation set
            for column, level in enumerate(levels):
                generators = [  # one per example: its mask does not depend on the chunk it sits in
                    torch.Generator(device=device).manual_seed(derived_seed(config.seed, "validation", first + row, column))
                    for row in range(len(input_ids))
                ]
                counts = None if level is None else mask_counts_at(level, lengths)
                # continuous: the nominal λ is routed as it is (training routes any λ in (0, 1]); grid: k / L
                nominal = None
                if level is not None and config.noise_draw == "continuous":
                    nominal = torch.full(lengths.shape, level, dtype=torch.float32, device=device)  # (B,)
                with accelerator.autocast():
                    gather_root(backbone.model)
                    out = masked_diffusion_loss(
                        backbone, input_ids, response_mask, attention_mask, generator=generators, mask_counts=counts,
                        noise_draw=config.noise_draw, routed_levels=nominal,
                    )
                if not surplus:
                    sums[0, column] += out.per_example.double().sum()
                    sums[1, column] += out.noise_level.double().sum()
    finally:
        backbone.model.train(was_training)
    means = (accelerator.reduce(sums) / len(examples)).tolist()  # (2, 1 + levels)
    by_level = dict(zip(config.noise_levels, means[0][1:]))
    routed = dict(zip(config.noise_levels, means[1][1:]))
    return ValidationReport(step, means[0][0], by_level, len(examples), routed)
