"""Stock PEFT adapter folders read as dllm-peft adapters: LoRA (rsLoRA too), DoRA (`use_dora`) and HiRA.

A folder that PEFT's `save_pretrained` wrote holds `adapter_config.json` (with `peft_type`) and
`adapter_model.safetensors`, keyed by PEFT's module names (read from PEFT 0.21's own output):

    base_model.model.<module>.lora_A.weight          (r, in)   → <module>.lora_A
    base_model.model.<module>.lora_B.weight          (out, r)  → <module>.lora_B
    base_model.model.<module>.lora_magnitude_vector  (out,)    → <module>.magnitude   (DoRA)
    base_model.model.<module>.hira_A / .hira_B                 → <module>.lora_A / .lora_B   (HiRA)

`<module>` is the module's full name in the transformers model, which is also its name in our backbone (our LLaDA
and Dream classes keep the released checkpoints' names). The result is the same (record, tensors) pair that a native
file gives, so every command that takes `--adapter` treats both alike.

Scaling: PEFT's LoRA update is (alpha / r)·B·A (alpha / √r with `use_rslora`), ours is s·B·A, so s = alpha / r. An
`alpha_pattern` that gives modules different scales is folded into each module's B (s = 1), which changes no output.
HiRA has no scale in PEFT (ΔW = W0 ⊙ (B·A)): s = 1. PEFT's DoRA and ours compute the same thing: the row norm of
W0 + s·B·A, treated as a constant in backpropagation (`dora.py`). Options that have no dllm-peft equivalent (bias
training, `modules_to_save`, differing ranks per module, ...) are refused by name rather than silently dropped.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import DllmPeftError
from ..models.default import DEFAULT_MODEL_NAME, SHIPPED_DIR

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PICKLE_FILE = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

# PEFT tensor-name suffix → our parameter name, per PEFT type.
_KEY_SUFFIXES = {
    "LORA": {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B", ".lora_magnitude_vector": "magnitude"},
    "HIRA": {".hira_A": "lora_A", ".hira_B": "lora_B"},
}
# PEFT settings that change what the adapter computes and that dllm-peft does not model: (value PEFT needs, why).
_UNSUPPORTED_SETTINGS = {
    "bias": ("none", "it trains biases"),
    "lora_bias": (False, "it trains a bias on lora_B"),
    "fan_in_fan_out": (False, "it stores Conv1D-style transposed weights"),
    "use_qalora": (False, "it is a quantization-aware LoRA"),
    "modules_to_save": (None, "it also saves whole modules (modules_to_save)"),
    "layer_replication": (None, "it replicates layers"),
    "trainable_token_indices": (None, "it trains token embeddings"),
    "target_parameters": (None, "it targets parameters rather than linear layers"),
    "alora_invocation_tokens": (None, "it is an activated LoRA (aLoRA)"),
}


def peft_config_beside(weights_file: Path) -> dict[str, Any] | None:
    """PEFT's `adapter_config.json` next to `weights_file` when there is one that names a `peft_type`; else None."""
    config_file = weights_file.parent / PEFT_CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return config if isinstance(config, dict) and "peft_type" in config else None


def peft_record(
    peft_config: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The dllm-peft record and tensors equivalent to a stock PEFT adapter.

    Args:
        peft_config: the folder's `adapter_config.json`.
        tensors: its `adapter_model.safetensors`, keyed by PEFT's names.
        source: the weights file, for messages.
    Returns:
        (record, tensors) as `files.read_adapter` returns them for a native file: lora_A (r, in), lora_B (out, r),
        magnitude (out,).
    """
    peft_type = str(peft_config.get("peft_type"))
    if peft_type not in _KEY_SUFFIXES:
        raise DllmPeftError(
            f"{str(source)!r} is a PEFT {peft_type} adapter; dllm-peft reads PEFT's LORA (use_dora included) and HIRA "
            "adapters only"
        )
    for setting, (needed, why) in _UNSUPPORTED_SETTINGS.items():
        if peft_config.get(setting, needed) not in (needed, {}, []):
            raise DllmPeftError(
                f"the PEFT adapter {str(source.parent)!r} sets {setting}={peft_config[setting]!r}, so {why}; dllm-peft "
                f"reads only adapters with {setting}={needed!r}"
            )
    modules = _rename(tensors, _KEY_SUFFIXES[peft_type], source)
    ranks = {name: parts["lora_A"].shape[0] for name, parts in modules.items()}
    if len(set(ranks.values())) > 1:
        raise DllmPeftError(
            f"the PEFT adapter {str(source.parent)!r} uses ranks {sorted(set(ranks.values()))} in different modules "
            "(rank_pattern); a dllm-peft adapter has one rank, so train or export it with a single r"
        )
    rank = next(iter(ranks.values()))
    dora = "magnitude" in next(iter(modules.values()))
    scales = {name: _peft_scaling(peft_config, name, ranks[name]) for name in modules}
    scale = next(iter(scales.values()))
    if len(set(scales.values())) > 1:  # an alpha_pattern: fold each module's scale into its B, so s = 1 everywhere
        for name, parts in modules.items():
            parts["lora_B"] = parts["lora_B"] * scales[name]
        scale = 1.0
    method = "hira" if peft_type == "HIRA" else ("dora" if dora else "lora")
    names = sorted(modules)
    record: dict[str, Any] = {
        "method": method,
        "rank": rank,
        "scale": scale,
        "dropout": float(peft_config.get("hira_dropout" if peft_type == "HIRA" else "lora_dropout", 0.0) or 0.0),
        "target_modules": names,
        "adapted_modules": names,
        "imported_from": {"format": "peft", "peft_type": peft_type, "path": str(source.parent),
                          "peft_version": peft_config.get("peft_version")},
    }
    base = peft_config.get("base_model_name_or_path")
    if base:  # an export of ours names the shipped folder of the default model: read it back as the built-in name
        record["base_model"] = DEFAULT_MODEL_NAME if Path(base).expanduser().resolve() == SHIPPED_DIR else base
    flat = {f"{name}.{key}": tensor for name, parts in modules.items() for key, tensor in parts.items()}
    return record, flat


def _rename(
    tensors: dict[str, torch.Tensor], suffixes: dict[str, str], source: Path
) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {our parameter name: tensor}} from PEFT's keys; an unknown key is an error naming it."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        for suffix, ours in suffixes.items():
            if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
                module = key[len(PEFT_PREFIX): -len(suffix)]
                modules.setdefault(module, {})[ours] = tensor
                break
        else:
            raise DllmPeftError(
                f"{str(source)!r} holds tensor {key!r}, which is not a PEFT {'/'.join(suffixes.values())} weight of "
                "a linear layer; dllm-peft cannot place it"
            )
    if not modules:
        raise DllmPeftError(f"{str(source)!r} holds no adapter tensors")
    for module, parts in modules.items():
        if "lora_A" not in parts or "lora_B" not in parts:
            raise DllmPeftError(f"{str(source)!r} lacks the A or B factor of module {module!r}; the file is incomplete")
    return modules


def _peft_scaling(peft_config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's LoRA scaling of `module`: alpha / r, or alpha / √r with rsLoRA (1 for HiRA, which has no alpha)."""
    if "lora_alpha" not in peft_config:
        return 1.0
    alpha = _pattern_value(peft_config.get("alpha_pattern") or {}, module, peft_config["lora_alpha"])
    return alpha / math.sqrt(rank) if peft_config.get("use_rslora") else alpha / rank


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """The value of the first `pattern` key that matches `module` as PEFT matches them (a suffix or a regex)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
