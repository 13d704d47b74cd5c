"""Merge an adapter into its base model and write a full checkpoint that `load_backbone` and transformers read.

Unload-with-merge, as PEFT's `merge_and_unload`: every adapter layer's base linear gets `W ← W + ΔW(λ)` (summed in
float32, then cast back to the base dtype), and the original module objects return in place of the wrappers. The
update comes from the layer itself (`delta_weight`), so every method that the registry marks `mergeable` merges the
same way. A noise-dependent method (NaRA) has no single merged model: it is merged at a chosen λ, where it is
exactly a LoRA with B' = B·C(λ) (`method-facts.md`); without λ the merge is refused with that explanation.

The base model comes from the adapter's recorded `base_model` unless one is given (litgpt reads it from the adapter
metadata the same way), and keeps the dtype its weights are stored in unless `--dtype` names another (a bfloat16 base
merged on a CPU stays bfloat16; the sum itself is taken in float32). The checkpoint (sharded safetensors, config,
tokenizer, and `merged_from.json` saying what was merged at which λ) is written into a staging directory beside the
output and renamed into place only when complete. For our LLaDA and Dream classes it also carries the model's code
and an `auto_map` (`models/portable.write_model_code`), so that `AutoModel.from_pretrained(folder,
trust_remote_code=True)` and `AutoTokenizer.from_pretrained(folder)` load it in a process without dllm-peft.
`--overwrite` replaces only the files a merge writes (`outputs.replaced_when_complete`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from .. import __version__
from ..config import MergeConfig
from ..errors import DllmPeftError
from ..models import load_backbone, stored_dtype
from ..models.portable import write_model_code
from ..outputs import (
    check_directory_output,
    check_output_path,
    owned_entries,
    replaced_when_complete,
)
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
    dtype: str = "auto"  # what the checkpoint's weights are stored in


def merge_noise_level(method: Method, noise_level: float | None) -> float | None:
    """The λ at which `method`'s update is taken for a merge or an export (None: the update ignores λ).

    Raises:
        DllmPeftError: the method cannot be merged, or it depends on λ and none was given.
    """
    if not method.mergeable:
        raise DllmPeftError(
            f"{method.name} adapters have no low-rank update to fold into the base weights or to export "
            f"({method.summary}); use them as adapters"
        )
    if not method.noise_dependent:
        return None
    if noise_level is None:
        raise DllmPeftError(
            f"a {method.name} update changes with the noise level λ ({method.summary}), so it has no single fixed "
            "form; choose the λ to take it at with --noise-level, a value in [0, 1]"
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
    check_output_path(config.output)  # before any work
    adapter_file = weights_path(config.adapter)
    record, _ = read_adapter(adapter_file)
    method, _ = config_from_record(record)
    level = merge_noise_level(method, config.noise_level)  # fails before the (possibly large) base is loaded
    base_model = config.model or record.get("base_model")
    if not base_model:
        raise DllmPeftError(f"{config.adapter!r} does not record its base model; name it with --model")
    output = Path(config.output)
    check_directory_output(output, config.overwrite, [Path(config.adapter), Path(base_model)], "merge")

    dtype = stored_dtype(base_model) if config.dtype == "auto" else config.dtype
    backbone = load_backbone(base_model, dtype=dtype, device=config.device)
    if not hasattr(backbone.model, "save_pretrained"):
        raise DllmPeftError(f"{base_model!r} is not a transformers model, so it cannot be written as a checkpoint")
    load_adapter(backbone, adapter_file)  # checks module names and shapes against this base
    merged = merge_into_base(backbone.model, level)
    provenance = {
        "adapter": str(config.adapter),
        "method": method.name,
        "base_model": base_model,
        "noise_level": level,
        "dtype": str(backbone.model.dtype).removeprefix("torch."),
        "dllm_peft_version": __version__,
    }
    with replaced_when_complete(output, "merge") as staging, _quiet_transformers():
        backbone.model.save_pretrained(staging, max_shard_size=config.max_shard_size)
        backbone.tokenizer.save_pretrained(staging)
        write_model_code(backbone.model, staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    files = sorted(owned_entries(output))
    return MergeResult(output, method.name, base_model, level, merged, files, provenance["dtype"])
