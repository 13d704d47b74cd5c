"""What a model needs to be loaded by others: a base name they can resolve, and checkpoints that load without us.

* `base_reference` turns the base-model name an adapter records (what `load_backbone` was given) into the
  `base_model_name_or_path` and the transformers Auto class that PEFT's `AutoPeftModel` needs, plus one sentence for
  the model card on how to get that base.
* `write_model_code` makes a saved LLaDA or Dream checkpoint load with `trust_remote_code=True` in a process that
  has never imported dllm-peft, the way LLaDA's own hub checkpoints do: the model's source file is copied into the
  folder and `config.json` gets an `auto_map` naming its classes. This works because `llada.py` and `dream.py` import
  nothing from dllm-peft (torch and transformers only), which `tests/test_portable.py` checks.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .checkpoint_dir import HUB_NAME
from .default import DEFAULT_MODEL_NAME, SHIPPED_DIR
from .dream import DreamConfig, DreamModel, is_dream_model_type
from .llada import LLaDAConfig, LLaDAModelLM

# Native class → (file name in the checkpoint, config class); the Auto classes each one is registered for.
_PORTABLE = {
    LLaDAModelLM: ("modeling_llada.py", LLaDAConfig),
    DreamModel: ("modeling_dream.py", DreamConfig),
}
_AUTO_CLASSES = ("AutoModel", "AutoModelForMaskedLM")
_HF_CACHE_REPO = re.compile(r"models--([^/]+)--([^/]+)")  # huggingface_hub's cache folder of repo org/name


@dataclasses.dataclass(frozen=True)
class BaseReference:
    name_or_path: str | None  # PEFT's base_model_name_or_path
    auto_class: str  # the transformers Auto class that loads it (PEFT's auto_mapping)
    how_to_load: str  # one sentence for a model card
    prelude: str = ""  # Python a loader must run first (dllm-tiny: the import that registers LLaDA)


def base_reference(base_model: str | None) -> BaseReference:
    """Where others find the base called `base_model` in an adapter record (see the module docstring)."""
    if not base_model:
        return BaseReference(None, "AutoModel", "The adapter does not record its base model; load the model it was "
                                                "trained on and pass it to `PeftModel.from_pretrained`.")
    if base_model == DEFAULT_MODEL_NAME:
        return BaseReference(
            str(SHIPPED_DIR), "AutoModel",
            f"The base is dllm-peft's built-in `{DEFAULT_MODEL_NAME}`, a LLaDA checkpoint shipped in the package "
            f"folder `dllm_peft/models/default`; `base_model_name_or_path` is that folder on the machine that "
            "exported this adapter. Elsewhere, `pip install dllm-peft`, `import dllm_peft.models` (it registers the "
            "LLaDA classes with transformers) and load `dllm_peft.models.default.SHIPPED_DIR`, or merge the adapter "
            "with `dllm-peft merge`, whose output loads with `trust_remote_code=True` alone. Its weights are stored "
            "in bfloat16; `dtype=torch.float32` gives the float32 model that dllm-peft runs.",
            prelude="import dllm_peft.models  # registers the LLaDA classes with transformers",
        )
    if base_model == "tiny-llada":
        return BaseReference(base_model, "AutoModel", "The base is dllm-peft's `tiny-llada`, built in code with a "
                                                      "fixed seed: `dllm_peft.models.tiny_llada().model`.")
    path = Path(base_model).expanduser()
    if not path.is_dir():
        return BaseReference(base_model, "AutoModel", f"The base is `{base_model}`.")
    config = _config(path)
    auto_class = _auto_class(config)
    cached = _HF_CACHE_REPO.search(str(path.resolve()))
    recorded = str(config.get("_name_or_path") or "")
    if cached:
        hub_id = f"{cached.group(1)}/{cached.group(2)}"
    elif HUB_NAME.fullmatch(recorded) and not Path(recorded).expanduser().exists():
        hub_id = recorded
    else:
        hub_id = None
    local = str(path.resolve())
    if hub_id:
        return BaseReference(hub_id, auto_class, f"The base is the hub model `{hub_id}` (trained here on the copy in "
                                                 f"`{local}`).")
    return BaseReference(local, auto_class, f"The base is the checkpoint folder `{local}`.")


def _config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _auto_class(config: dict) -> str:
    """The Auto class dllm-peft's loader corresponds to: masked LMs keep their head, LLaDA and Dream are AutoModel."""
    model_type = config.get("model_type")
    if model_type == "llada" or is_dream_model_type(model_type):
        return "AutoModel"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "AutoModelForMaskedLM"
    for name in ("AutoModelForMaskedLM", "AutoModel", "AutoModelForCausalLM"):
        if name in config.get("auto_map", {}):
            return name
    return "AutoModel"


def write_model_code(model: nn.Module, directory: str | Path) -> bool:
    """Copy the model's source file into the saved checkpoint `directory` and point `config.json`'s auto_map at it.

    Returns:
        False (and changes nothing) when `model` is not one of our native classes, whose code is self-contained.
    """
    entry = _PORTABLE.get(type(model))
    if entry is None:
        return False
    file_name, config_class = entry
    directory = Path(directory)
    (directory / file_name).write_text(inspect.getsource(inspect.getmodule(type(model))), encoding="utf-8")
    module = file_name.removesuffix(".py")
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    auto_map = {"AutoConfig": f"{module}.{config_class.__name__}"}
    auto_map |= {auto: f"{module}.{type(model).__name__}" for auto in _AUTO_CLASSES}
    config["auto_map"] = auto_map
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True
