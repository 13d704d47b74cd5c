"""Merge an adapter into its base model and write a full checkpoint that `load_backbone` and transformers read.

Unload-with-merge, as PEFT's `merge_and_unload`: every adapter layer's base linear gets `W ← W + ΔW(λ)` (summed in
float32, then cast back to the base dtype), and the original module objects return in place of the wrappers. The
update comes from the layer itself (`delta_weight`), so every method that the registry marks `mergeable` merges the
same way. A noise-dependent method (NaRA) has no single merged model: it is merged at a chosen λ, where it is
exactly a LoRA with B' = B·C(λ) (`method-facts.md`); without λ the merge is refused with that explanation.

The base model comes from the adapter's recorded `base_model` unless one is given (litgpt reads it from the adapter
metadata the same way). The checkpoint (sharded safetensors, config, tokenizer, and `merged_from.json` saying what was
merged at which λ) is written into a staging directory beside the output and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from .. import __version__
from ..atomic import make_staging_dir
from ..config import MergeConfig
from ..errors import DllmPeftError
from ..models import load_backbone
from .base import adapter_layers, unload
from .files import config_from_record, load_adapter, read_adapter, weights_path
from .registry import Method

PROVENANCE_FILE = "merged_from.json"


@dataclasses.dataclass(frozen=True)
class MergeResult:
    output: Path
    method: str
    base_model: str
    noise_level: float | None  # None when the method's update does not depend on λ
    merged_modules: int
    files: list[str]


def merge_noise_level(method: Method, noise_level: float | None) -> float | None:
    """The λ at which `method`'s update is taken for a merge or an export (None: the update ignores λ).

    Raises:
        DllmPeftError: the method cannot be merged, or it depends on λ and none was given.
    """
    if not method.mergeable:
        raise DllmPeftError(
            f"{method.name} adapters cannot be folded into the base weights ({method.summary}); use them as adapters"
        )
    if not method.noise_dependent:
        return None
    if noise_level is None:
        raise DllmPeftError(
            f"a {method.name} update changes with the noise level λ ({method.summary}), so there is no single merged "
            "model; choose the λ to merge at with --noise-level, a value in [0, 1]"
        )
    return noise_level


def merge_into_base(model: nn.Module, noise_level: float | None) -> int:
    """Fold every adapter layer of `model` into its base linear at `noise_level` and unload the adapter.

    Returns:
        The number of merged modules.
    """
    layers = adapter_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            weight = layer.base_layer.weight  # (out, in)
            delta = layer.delta_weight(noise_level).to(device=weight.device, dtype=torch.float32)  # (out, in)
            weight.copy_((weight.float() + delta).to(weight.dtype))
    unload(model)  # the wrappers go, the (now merged) base linears return in their place
    return len(layers)


def check_output(output: Path, overwrite: bool, protected: list[Path]) -> None:
    """Refuse an output that already holds files (unless `overwrite`) or that would replace one of `protected`."""
    target = output.resolve()
    for path in protected:
        if path.exists() and (target == path.resolve() or target in path.resolve().parents):
            raise DllmPeftError(f"--output {str(output)!r} would replace the input {str(path)!r}; choose another")
    if output.exists() and not output.is_dir():
        raise DllmPeftError(f"--output {str(output)!r} is a file; name a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DllmPeftError(f"--output {str(output)!r} is not empty; pass --overwrite or choose another directory")


@contextlib.contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """A fresh directory beside `output` that replaces it once the block succeeds, and vanishes if it fails.

    A crash therefore leaves either the previous contents of `output` or the complete new ones, never half of both.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if output.exists():
        previous = output.with_name(staging.name.replace(".tmp", ".old"))
        output.rename(previous)
    staging.rename(output)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' shard-writing progress bar: the core never prints, the CLI shows its own status."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def merge_adapter(config: MergeConfig) -> MergeResult:
    """Merge the adapter of `config.adapter` into its base and write the checkpoint to `config.output`."""
    adapter_file = weights_path(config.adapter)
    record, _ = read_adapter(adapter_file)
    method, _ = config_from_record(record)
    level = merge_noise_level(method, config.noise_level)  # fails before the (possibly large) base is loaded
    base_model = config.model or record.get("base_model")
    if not base_model:
        raise DllmPeftError(f"{config.adapter!r} does not record its base model; name it with --model")
    output = Path(config.output)
    check_output(output, config.overwrite, [Path(config.adapter), Path(base_model)])

    backbone = load_backbone(base_model, dtype=config.dtype, device=config.device)
    if not hasattr(backbone.model, "save_pretrained"):
        raise DllmPeftError(f"{base_model!r} is not a transformers model, so it cannot be written as a checkpoint")
    load_adapter(backbone, adapter_file)  # checks module names and shapes against this base
    merged = merge_into_base(backbone.model, level)
    provenance = {
        "adapter": str(config.adapter),
        "method": method.name,
        "base_model": base_model,
        "noise_level": level,
        "dllm_peft_version": __version__,
    }
    with staged_directory(output) as staging, _quiet_transformers():
        backbone.model.save_pretrained(staging, max_shard_size=config.max_shard_size)
        backbone.tokenizer.save_pretrained(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    files = sorted(path.name for path in output.iterdir())
    return MergeResult(output, method.name, base_model, level, merged, files)
