"""Adapter files: `adapter_config.json` + `adapter_model.safetensors` in a directory (no pickle anywhere).

The JSON holds the method, every config field, the base model id, the dllm-peft version and the adapted modules. The
same JSON is embedded in the safetensors metadata, so the `.safetensors` file alone is self-describing (`inspect`
reads just that). Writes are atomic: each file is written beside its destination and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .. import __version__
from ..atomic import atomic_save_tensors, atomic_write_bytes
from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .base import adapter_config, adapter_layers, adapter_state_dict, inject, unload
from .registry import get_method

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_KEY = "dllm_peft_config"


def adapter_record(backbone: Backbone) -> dict[str, Any]:
    """The JSON description of the adapter currently injected in `backbone.model`."""
    config = adapter_config(backbone.model)
    if config is None:
        raise DllmPeftError("the model carries no adapter to save")
    return {
        **config.to_dict(),
        "base_model": backbone.name,
        "dllm_peft_version": __version__,
        "adapted_modules": list(adapter_layers(backbone.model)),
    }


def save_adapter(
    backbone: Backbone,
    directory: str | Path,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the injected adapter of `backbone` to `directory`. Returns the directory.

    Args:
        tensors: the adapter's tensors when the model's own are sharded (FSDP gathers them first); default: the model's.
    """
    directory = Path(directory)
    record = {**adapter_record(backbone), **(extra or {})}
    text = json.dumps(record, indent=2, sort_keys=False)
    tensors = adapter_state_dict(backbone.model) if tensors is None else tensors
    atomic_save_tensors(tensors, directory / WEIGHTS_FILE, {METADATA_KEY: text})
    atomic_write_bytes(directory / CONFIG_FILE, (text + "\n").encode())
    return directory


def weights_path(path: str | Path) -> Path:
    """The `.safetensors` file of an adapter given as its directory or as the file itself."""
    path = Path(path)
    if not path.exists():
        raise DllmPeftError(f"adapter path {str(path)!r} does not exist")
    if path.is_dir():
        path = path / WEIGHTS_FILE
        if not path.exists():
            raise DllmPeftError(f"{str(path.parent)!r} holds no {WEIGHTS_FILE}; is it an adapter directory?")
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's JSON record and its tensors, from the directory or the `.safetensors` file alone."""
    file = weights_path(path)
    try:
        with safe_open(str(file), framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        raise DllmPeftError(f"{str(file)!r} is not a readable safetensors adapter file ({error})") from None
    if METADATA_KEY not in metadata:
        raise DllmPeftError(f"{str(file)!r} carries no dllm-peft metadata; it was not written by dllm-peft")
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        raise DllmPeftError(f"the metadata in {str(file)!r} is not valid JSON; the file is damaged") from None
    _check_config_file(file.parent / CONFIG_FILE, record)
    return record, tensors


def _check_config_file(path: Path, record: dict[str, Any]) -> None:
    """The weights' own metadata is what loads; an `adapter_config.json` beside them must describe the same adapter."""
    if not path.is_file():
        return
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DllmPeftError(f"{str(path)!r} is not valid JSON; delete it (the .safetensors file describes itself)") from None
    method = written.get("method") if isinstance(written, dict) else None
    if method != record.get("method"):
        raise DllmPeftError(
            f"{str(path)!r} names method {method!r} but {WEIGHTS_FILE} beside it holds a {record.get('method')!r} "
            "adapter; the directory mixes two adapters: save the adapter again or point at the .safetensors file"
        )


def config_from_record(record: dict[str, Any]):
    """The adapter config object described by a saved record."""
    if "method" not in record:
        raise DllmPeftError("the adapter record names no method; the file is damaged")
    method = get_method(record["method"])
    fields = {key: value for key, value in record.items() if key not in _RECORD_ONLY_KEYS}
    return method, method.config_class.from_dict(fields)


_RECORD_ONLY_KEYS = {"base_model", "dllm_peft_version", "adapted_modules", "training"}


def load_adapter(backbone: Backbone, path: str | Path) -> dict[str, Any]:
    """Inject the adapter stored at `path` into `backbone.model` and load its tensors. Returns its record."""
    record, tensors = read_adapter(path)
    method, config = config_from_record(record)
    inject(backbone.model, config, method.layer_class, backbone.default_targets)
    expected = adapter_state_dict(backbone.model)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        _fail_and_unload(backbone, f"the adapter does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, target in expected.items():
        if tensors[name].shape != target.shape:
            _fail_and_unload(
                backbone,
                f"tensor {name!r} has shape {tuple(tensors[name].shape)} but this model needs {tuple(target.shape)}; "
                f"the adapter was trained on {record.get('base_model')!r}",
            )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name])
    return record


def _fail_and_unload(backbone: Backbone, message: str) -> None:
    unload(backbone.model)
    raise DllmPeftError(message)
