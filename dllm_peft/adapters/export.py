"""Export an adapter as a stock PEFT adapter directory that `peft.PeftModel.from_pretrained` loads.

A method whose update is a low-rank product ΔW = left·right (`low_rank_factors`) is exactly a LoRA: PEFT's `lora_B`
is `left` (out, r) and `lora_A` is `right` (r, in). NaRA at a chosen λ is such a LoRA with B' = s·B·C(λ) and A' = A
(`method-facts.md`); NaRA-C folds its constant core the same way; LoRA keeps its own factors. Two methods that are not
low-rank products have a PEFT form of their own, and the same reading of PEFT's code as `peft_import.py` (its inverse):
- DoRA is PEFT's LoRA with `use_dora`: `lora_B` = s·B (NaRA-DoRA: s·B·C(λ)), `lora_A` = A and the magnitude m as
  `lora_magnitude_vector`; PEFT's DoRA takes the row norm of W0 + (alpha / r)·B·A = W0 + s·B·A, as `dora.py` does.
- HiRA is PEFT's `HIRA` type, ΔW = W0 ⊙ (hira_B · hira_A) with no scale: `hira_B` = s·B, `hira_A` = A.

The scale s is folded into `lora_B` and `lora_alpha` equals the rank, so PEFT's scaling alpha / r is 1. We do this
instead of setting alpha = s·r because ΔW = left·right is the one contract every method honours (a method with a
noise-dependent or per-layer scale has no single alpha); with the default s = 1 the exported `lora_B` of a LoRA is its
trained B.

The layout follows PEFT's own files (read from PEFT's `save_pretrained` output): `adapter_config.json` with
`peft_type: "LORA"` and the full module names as `target_modules` (full names cannot catch the LM head by accident),
and `adapter_model.safetensors` keyed `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`. When peft is
installed the config is built by its own `LoraConfig` (so every field of that release, `peft_version` included, is
there); `task_type` stays None and `auto_mapping` names the transformers Auto class of the base, which is what
`AutoPeftModel.from_pretrained(export_dir)` needs. `base_model_name_or_path` is a name others can resolve
(`models/portable.base_reference`), and a short model card (README.md) says what was trained and how to load it. No
base model is loaded: the factors are rebuilt from the adapter file alone.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from .. import __version__
from ..config import ExportConfig
from ..errors import DllmPeftError
from ..models.portable import BaseReference, base_reference
from ..outputs import check_directory_output, check_output_path, replaced_when_complete
from .dora import DoraLayer
from .hira import HiraLayer
from .merge import merge_noise_level
from .peft_import import PEFT_CONFIG_FILE, PEFT_PREFIX, PEFT_WEIGHTS_FILE
from .summary import AdapterParts, standalone_adapter

MODEL_CARD_FILE = "README.md"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    output: Path
    method: str
    noise_level: float | None  # None when the method's update does not depend on λ
    modules: int
    rank: int
    form: str  # what PEFT calls it (`PEFT_FORMS`)


def peft_kind(parts: AdapterParts) -> str:
    """The PEFT form of the adapter's layers: "lora", "dora" (LoRA with `use_dora`) or "hira"."""
    layer = next(iter(parts.layers.values()))
    if isinstance(layer, DoraLayer):
        return "dora"
    if isinstance(layer, HiraLayer):
        return "hira"
    if getattr(layer, "low_rank_factors", None) is None:
        raise DllmPeftError(
            f"{parts.method.name} updates are neither a low-rank product nor DoRA or HiRA, so they have no stock PEFT "
            "form; use `dllm-peft merge` instead"
        )
    return "lora"


def peft_tensors(parts: AdapterParts, kind: str, noise_level: float | None):
    """PEFT tensors of every adapted module in the form `kind` (`peft_kind`), and each module's rank.

    Returns:
        ({PEFT key: tensor}, {module name: rank}); the A factors are (r, in), the B factors (out, r), a DoRA
        magnitude (out,).
    """
    tensors, ranks = {}, {}
    for name, layer in parts.layers.items():
        prefix = f"{PEFT_PREFIX}{name}"
        if kind == "hira":
            tensors[f"{prefix}.hira_A"] = layer.lora_A.detach().contiguous()
            tensors[f"{prefix}.hira_B"] = (layer.config.scale * layer.lora_B).detach().contiguous()
            ranks[name] = layer.lora_A.shape[0]
            continue
        if kind == "dora":
            up = layer.up_factor(layer.core_at(noise_level))  # (out, r), or (1, out, r) with a core
            left, right = up.reshape(up.shape[-2:]), layer.lora_A
            tensors[f"{prefix}.lora_magnitude_vector"] = layer.magnitude.detach().contiguous()
        else:
            left, right = layer.low_rank_factors(noise_level)  # (out, r), (r, in)
        tensors[f"{prefix}.lora_A.weight"] = right.detach().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = left.detach().contiguous()
        ranks[name] = right.shape[0]
    return tensors, ranks


def peft_config(parts: AdapterParts, kind: str, ranks: dict[str, int], base: BaseReference) -> dict[str, Any]:
    """PEFT's `adapter_config.json` for the exported factors (scale folded into the B factor, so alpha = r)."""
    hira = kind == "hira"
    fields = _hira_fields(parts, ranks, base) if hira else _lora_fields(parts, ranks, base, dora=kind == "dora")
    try:
        import peft
    except ImportError:  # peft is optional at run time: write the fields PEFT has accepted for many releases
        config = {"peft_type": "HIRA" if hira else "LORA", **fields}
    else:
        config = (peft.HiraConfig if hira else peft.LoraConfig)(**fields).to_dict()
        config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    config["auto_mapping"] = {"base_model_class": base.auto_class, "parent_library": "transformers"}
    return config


def _lora_fields(parts: AdapterParts, ranks: dict[str, int], base: BaseReference, dora: bool) -> dict[str, Any]:
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    others = {name: module_rank for name, module_rank in ranks.items() if module_rank != rank}
    return {
        "task_type": None,
        "base_model_name_or_path": base.name_or_path,
        "revision": None,
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": others,
        "alpha_pattern": others,  # alpha = r module by module: PEFT's scaling is 1 everywhere
        "lora_dropout": getattr(parts.config, "dropout", 0.0),
        "target_modules": sorted(ranks),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": dora,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def _hira_fields(parts: AdapterParts, ranks: dict[str, int], base: BaseReference) -> dict[str, Any]:
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    return {
        "task_type": None,
        "base_model_name_or_path": base.name_or_path,
        "revision": None,
        "r": rank,
        "rank_pattern": {name: module_rank for name, module_rank in ranks.items() if module_rank != rank},
        "hira_dropout": getattr(parts.config, "dropout", 0.0),
        "target_modules": sorted(ranks),
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


PEFT_FORMS = {"lora": "PEFT LoRA", "dora": "PEFT DoRA", "hira": "PEFT HiRA"}  # for the user; DoRA is LoRA + use_dora


def model_card(parts: AdapterParts, kind: str, level: float | None, base: BaseReference, config: dict[str, Any]) -> str:
    """README.md of an export: method (λ for a noise-dependent one), data and steps when recorded, how to load it."""
    method = parts.method.name
    at = ""
    if level is not None:
        at = f" taken at the noise level λ = {level:g} (its update changes with λ; this file holds that one LoRA)"
    training = parts.record.get("training") or {}
    imported = parts.record.get("imported_from")
    if training:
        trained = f"Trained on `{training.get('data')}` for {training.get('steps')} steps (seed {training.get('seed')}"
        trained += f", learning rate {training.get('lr')})." if training.get("lr") is not None else ")."
    elif imported:
        trained = f"Imported from the {imported.get('format')} adapter `{imported.get('path')}`; no training record."
    else:
        trained = "The adapter file carries no training record."
    loader = "AutoPeftModel" if base.name_or_path else "PeftModel"
    load = (
        "from peft import AutoPeftModel\nmodel = AutoPeftModel.from_pretrained(\"<this folder>\")"
        if base.name_or_path
        else "from peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, \"<this folder>\")"
    )
    return "\n".join([
        "---",
        "library_name: peft",
        *([f"base_model: {base.name_or_path}"] if base.name_or_path and not Path(base.name_or_path).is_absolute()
          else []),
        "---",
        "",
        f"# {method} adapter exported by dllm-peft {__version__}",
        "",
        (
            f"A **{method}** adapter ({parts.method.summary}){at}, written as a stock {PEFT_FORMS[kind]}: rank "
            f"{config['r']}, {len(config['target_modules'])} modules, scale folded into the B factor"
            + {"hira": " (PEFT's HiRA has no scale).", "dora": " (`lora_alpha` = r), magnitude in "
               "`lora_magnitude_vector` (`use_dora`: true)."}.get(kind, " (`lora_alpha` = r).")
        ),
        "",
        trained,
        "",
        "## Base model",
        "",
        base.how_to_load,
        "",
        "## Load",
        "",
        "```python",
        *([base.prelude] if base.prelude else []),
        load,
        "```",
        "",
        (
            f"`{loader}` reads `base_model_name_or_path` and `auto_mapping` from `{PEFT_CONFIG_FILE}`. The model is "
            "a masked-diffusion denoiser: sample from it with dllm-peft (`dllm-peft sample --adapter <this folder>`) "
            "or the base model's own diffusion sampler, not with `generate`."
        ),
        "",
    ])


def export_adapter(config: ExportConfig) -> ExportResult:
    """Write the adapter of `config.adapter` as a PEFT directory (with a model card) at `config.output`."""
    check_output_path(config.output)  # before any work
    parts = standalone_adapter(config.adapter)
    level = merge_noise_level(parts.method, config.noise_level)
    output = Path(config.output)
    check_directory_output(output, config.overwrite, [Path(config.adapter)], "export")
    kind = peft_kind(parts)
    tensors, ranks = peft_tensors(parts, kind, level)
    base = base_reference(parts.record.get("base_model"))
    config_fields = peft_config(parts, kind, ranks, base)
    provenance = {"adapter": str(config.adapter), "method": parts.method.name, "noise_level": level}
    metadata = {"format": "pt", "dllm_peft_export": json.dumps({**provenance, "dllm_peft_version": __version__})}
    with replaced_when_complete(output, "export") as staging:
        save_file(tensors, str(staging / PEFT_WEIGHTS_FILE), metadata=metadata)
        (staging / PEFT_CONFIG_FILE).write_text(json.dumps(config_fields, indent=2, sort_keys=True) + "\n")
        (staging / MODEL_CARD_FILE).write_text(model_card(parts, kind, level, base, config_fields))
    return ExportResult(output, parts.method.name, level, len(ranks), config_fields["r"], PEFT_FORMS[kind])
