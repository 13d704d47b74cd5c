"""The NaRA authors' checkpoints read as dllm-peft NaRA adapters (reference: `wataeiei/NaRA`, `nara/tuners/nara.py`,
`nara/utils/save_and_load.py`).

Their `save_pretrained` writes a folder holding `adapter_config.json` (`peft_type: "NARA"`) and `adapter_model.bin`,
a `torch.save` of a dict of tensors. It is read here with `torch.load(weights_only=True)` only, which refuses to
run pickled code. Their key names (adapter name removed on save) and ours:

    base_model.model.<module>.lora_A                 (r, in)      → <module>.lora_A
    base_model.model.<module>.lora_B                 (out, r)     → <module>.lora_B
    base_model.global_mapper[.<group>].model.{0,2,4}.{weight,bias} → <core>.hypernetwork.{0,2,4}.…  (last: transposed)
    base_model.embedding_layers.NL_emb.W             (1, d/2)     → <core>.embedding.frequencies (d/2,)
    base_model.embedding_layers.NL_emb.proj.{weight,bias}         → <core>.embedding.0.…   (embedding_type "mlp")
    base_model.constant_c                            (r, r)       → <core>.deviation, transposed   (input_mode "constant")

where <core> is `dllm_peft_router.shared.<shared | groupN>`. The maths: theirs is C = I + c_scale · view(F(e(λ)), r, r)
applied to the row vector h = A x as h · C, so ΔW = scale_ab · B · Cᵀ · A; ours is ΔW = s · B · C · A. So c_scale is
our η, scale_ab our s (their `lora_alpha` is not used in the forward), and the r × r output of the last layer (and the
constant core) is transposed: rows (i, j) of the last layer become rows (j, i). One embedding serves all their mapper
groups; each of our group cores gets a copy.
Not importable, refused by name: input_mode "nd" / "both" (noise density), trained biases, Conv1D layouts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import DllmPeftError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.bin"
PEFT_TYPE = "NARA"
PREFIX = "base_model."
MODULE_PREFIX = "base_model.model."
ROUTER_PREFIX = "dllm_peft_router.shared."


def reference_config_beside(weights_file: Path) -> dict[str, Any] | None:
    """The authors' `adapter_config.json` next to `weights_file` when it says `peft_type: NARA`; else None."""
    config_file = weights_file.parent / CONFIG_FILE
    if weights_file.name != WEIGHTS_FILE or not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return config if isinstance(config, dict) and str(config.get("peft_type")) == PEFT_TYPE else None


def read_reference_nara(file: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(record, tensors under our names) of an authors' NaRA folder, or None when `file` is not one."""
    config = reference_config_beside(file)
    if config is None:
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for foreign or damaged files
        raise DllmPeftError(f"{str(file)!r} is not a readable NaRA checkpoint of tensors only ({error})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(value) for value in state.values()):
        raise DllmPeftError(f"{str(file)!r} does not hold a dict of tensors; it is not a NaRA checkpoint")
    return reference_record(config, {key: value.float() for key, value in state.items()}, file)


def reference_record(
    config: dict[str, Any], state: dict[str, torch.Tensor], source: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map the authors' config and tensors (their key names, float32) onto a dllm-peft NaRA / NaRA-C adapter."""
    mode = config.get("input_mode", "nl")
    if mode not in ("nl", "constant"):
        raise DllmPeftError(
            f"the NaRA checkpoint {str(source.parent)!r} uses input_mode={mode!r} (noise density); dllm-peft's NaRA "
            "is conditioned on the noise level only (input_mode 'nl' or 'constant')"
        )
    for setting, needed in (("bias", "none"), ("fan_in_fan_out", False), ("modules_to_save", None)):
        if config.get(setting, needed) not in (needed, [], {}):
            raise DllmPeftError(
                f"the NaRA checkpoint {str(source.parent)!r} sets {setting}={config[setting]!r}; dllm-peft reads only "
                f"checkpoints with {setting}={needed!r}"
            )
    tensors: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    global_keys: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(MODULE_PREFIX) and key.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            module, part = key[len(MODULE_PREFIX):].rsplit(".", 1)
            modules.add(module)
            tensors[f"{module}.{part}"] = tensor
        elif key.startswith(PREFIX) and key[len(PREFIX):].split(".")[0] in ("global_mapper", "embedding_layers", "constant_c"):
            global_keys[key[len(PREFIX):]] = tensor
        else:
            raise DllmPeftError(f"{str(source)!r} holds tensor {key!r}, which is not part of a NaRA adapter")
    if not modules:
        raise DllmPeftError(f"{str(source)!r} holds no lora_A / lora_B tensors")
    for module in modules:
        if f"{module}.lora_A" not in tensors or f"{module}.lora_B" not in tensors:
            raise DllmPeftError(f"{str(source)!r} lacks the A or B factor of module {module!r}; the file is incomplete")
    rank = int(config.get("r_ab", next(iter(tensors.values())).shape[0]))
    names = sorted(modules)
    record: dict[str, Any] = {
        "method": "nara-c" if mode == "constant" else "nara",
        "rank": rank,
        "scale": float(config.get("scale_ab", 1.0)),
        "dropout": float(config.get("lora_dropout", 0.0) or 0.0),
        "eta": float(config.get("c_scale", 1.0)),
        "target_modules": names,
        "adapted_modules": names,
        "imported_from": {"format": "nara-reference", "path": str(source.parent)},
    }
    if config.get("base_model_name_or_path"):
        record["base_model"] = config["base_model_name_or_path"]
    if mode == "constant":
        if "constant_c" not in global_keys:
            raise DllmPeftError(f"{str(source)!r} has input_mode 'constant' but no constant_c tensor")
        tensors[f"{ROUTER_PREFIX}shared.deviation"] = global_keys["constant_c"].T.contiguous()  # row → column form
        return record, tensors

    groups = config.get("mapper_groups")
    cores = {"shared": "global_mapper.model."} if not groups else {
        f"group{index}": f"global_mapper.{name}.model." for index, name in enumerate(groups)
    }
    if groups:
        record["groups"] = [list(patterns) for patterns in groups.values()]
    embedding = config.get("embedding_type", "fourier")
    hidden = (int(config.get("fnn_hidden_size_1", 256)), int(config.get("fnn_hidden_size_2", 512)))
    record |= {"embedding": embedding, "embedding_dim": int(config.get("embedding_dim", 64)), "hidden_sizes": list(hidden)}
    embedding_tensors = {key[len("embedding_layers.NL_emb."):]: value for key, value in global_keys.items()
                         if key.startswith("embedding_layers.NL_emb.")}
    needed = {"fourier": ("W",), "mlp": ("proj.weight", "proj.bias"), "raw": ()}.get(embedding)
    if needed is None or any(name not in embedding_tensors for name in needed):
        raise DllmPeftError(f"{str(source)!r}: embedding_type {embedding!r} without its tensors {needed}; the file is incomplete")
    for core, prefix in cores.items():
        for layer in (0, 2, 4):
            for part in ("weight", "bias"):
                key = f"{prefix}{layer}.{part}"
                if key not in global_keys:
                    raise DllmPeftError(f"{str(source)!r} lacks the hypernetwork tensor {key!r}; the file is incomplete")
                value = global_keys[key]
                if layer == 4:  # their C is applied to a row vector: our C = theirᵀ, so permute the r² outputs
                    value = value.reshape(rank, rank, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
                tensors[f"{ROUTER_PREFIX}{core}.hypernetwork.{layer}.{part}"] = value.contiguous()
        if embedding == "fourier":
            tensors[f"{ROUTER_PREFIX}{core}.embedding.frequencies"] = embedding_tensors["W"].reshape(-1).clone()
        elif embedding == "mlp":
            for part in ("weight", "bias"):
                tensors[f"{ROUTER_PREFIX}{core}.embedding.0.{part}"] = embedding_tensors[f"proj.{part}"].clone()
    return record, tensors
