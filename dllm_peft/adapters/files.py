"""Adapter files: `dllm_peft_adapter.json` + `dllm_peft_adapter.safetensors` in a directory (no pickle anywhere).

The JSON holds the method, every config field, the base model id, the dllm-peft version and the adapted modules. The
same JSON is embedded in the safetensors metadata, so the `.safetensors` file alone is self-describing (`inspect`
reads just that). Writes are atomic: each file is written beside its destination and renamed into place.

The names are our own so that a native folder is never taken for a PEFT one (PEFT's loader would read our JSON as
its config and fail on a missing `peft_type`); `dllm-peft export` writes the PEFT form. Reading accepts three layouts,
tried in this order (`read_adapter`):
  1. native files (or their old names, `adapter_config.json` + `adapter_model.safetensors` carrying our metadata);
  2. a stock PEFT LoRA / DoRA / HiRA folder (`peft_import.py`), mapped onto the same record and tensor names;
  3. any reader in `FOREIGN_READERS`, for other published layouts: the NaRA authors' checkpoints
     (`nara_reference.py`: `adapter_model.bin`, read with `torch.load(weights_only=True)` only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .. import __version__
from ..atomic import atomic_save_tensors, atomic_write_bytes
from ..errors import DllmPeftError
from ..models.backbone import Backbone
from ..models.targets import linear_layer_names
from .base import (
    AdapterLayer,
    adapter_config,
    adapter_layers,
    adapter_state_dict,
    inject,
    unload,
)
from .peft_import import (
    PEFT_PICKLE_FILE,
    PEFT_WEIGHTS_FILE,
    peft_config_beside,
    peft_record,
)
from .nara_reference import read_reference_nara, reference_config_beside
from .registry import get_method

CONFIG_FILE = "dllm_peft_adapter.json"
WEIGHTS_FILE = "dllm_peft_adapter.safetensors"
LEGACY_CONFIG_FILE = "adapter_config.json"  # the names dllm-peft wrote before they became its own (still read)
LEGACY_WEIGHTS_FILE = PEFT_WEIGHTS_FILE
METADATA_KEY = "dllm_peft_config"

Record = dict[str, Any]
Tensors = dict[str, torch.Tensor]


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
    """The `.safetensors` file of an adapter given as its directory (native, old native or PEFT) or as the file."""
    path = Path(path)
    if not path.exists():
        raise DllmPeftError(f"adapter path {str(path)!r} does not exist")
    if not path.is_dir():
        return path
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (path / name).is_file():
            return path / name
    if (path / PEFT_PICKLE_FILE).is_file() and reference_config_beside(path / PEFT_PICKLE_FILE) is not None:
        return path / PEFT_PICKLE_FILE
    if (path / PEFT_PICKLE_FILE).is_file():
        raise DllmPeftError(
            f"{str(path)!r} holds {PEFT_PICKLE_FILE}, a pickle file, which dllm-peft does not load; save the adapter "
            f"again with PEFT's save_pretrained(..., safe_serialization=True) to get {PEFT_WEIGHTS_FILE}"
        )
    raise DllmPeftError(
        f"{str(path)!r} holds neither {WEIGHTS_FILE} nor a PEFT {LEGACY_WEIGHTS_FILE}; is it an adapter directory?"
    )


def read_adapter(path: str | Path) -> tuple[Record, Tensors]:
    """The adapter's JSON record and its tensors (native names), from a directory or a `.safetensors` file alone.

    A stock PEFT folder (or its `adapter_model.safetensors` with `adapter_config.json` beside it) gives the record and
    tensors of the equivalent dllm-peft adapter; see the module docstring for the order in which layouts are tried.
    """
    file = weights_path(path)
    if file.suffix == ".bin":  # only a foreign reader that knows the layout opens it (tensors only, no pickled code)
        for reader in FOREIGN_READERS:
            found = reader(file, {}, {})
            if found is not None:
                return found
        raise DllmPeftError(f"{str(file)!r} is a pickle file, which dllm-peft reads only in the NaRA authors' layout")
    try:
        with safe_open(str(file), framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        raise DllmPeftError(f"{str(file)!r} is not a readable safetensors adapter file ({error})") from None
    if METADATA_KEY in metadata:
        try:
            record = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError:
            raise DllmPeftError(f"the metadata in {str(file)!r} is not valid JSON; the file is damaged") from None
        config_name = CONFIG_FILE if file.name == WEIGHTS_FILE else LEGACY_CONFIG_FILE
        _check_config_file(file.parent / config_name, record, file.name)
        return record, tensors
    for reader in FOREIGN_READERS:
        found = reader(file, metadata, tensors)
        if found is not None:
            return found
    raise DllmPeftError(
        f"{str(file)!r} carries no dllm-peft metadata and has no PEFT {LEGACY_CONFIG_FILE} beside it; it was written "
        "neither by dllm-peft nor by PEFT"
    )


def _read_peft(file: Path, metadata: dict[str, str], tensors: Tensors) -> tuple[Record, Tensors] | None:
    peft_config = peft_config_beside(file)
    if peft_config is None or file.suffix != ".safetensors":
        return None
    return peft_record(peft_config, tensors, file)


def _read_nara_reference(file: Path, metadata: dict[str, str], tensors: Tensors) -> tuple[Record, Tensors] | None:
    return read_reference_nara(file)


# Readers of layouts that other tools write: (weights file, its safetensors metadata, its tensors) → (record, tensors
# under native names), or None when the file is not theirs. Tried in order after the native layout.
ForeignReader = Callable[[Path, dict[str, str], Tensors], "tuple[Record, Tensors] | None"]
FOREIGN_READERS: list[ForeignReader] = [_read_peft, _read_nara_reference]


def _check_config_file(path: Path, record: dict[str, Any], weights_name: str) -> None:
    """The weights' own metadata is what loads; the config file beside them must describe the same adapter."""
    if not path.is_file():
        return
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DllmPeftError(f"{str(path)!r} is not valid JSON; delete it (the .safetensors file describes itself)") from None
    method = written.get("method") if isinstance(written, dict) else None
    if method != record.get("method"):
        raise DllmPeftError(
            f"{str(path)!r} names method {method!r} but {weights_name} beside it holds a {record.get('method')!r} "
            "adapter; the directory mixes two adapters: save the adapter again or point at the .safetensors file"
        )


def config_from_record(record: dict[str, Any]):
    """The adapter config object described by a saved record."""
    if "method" not in record:
        raise DllmPeftError("the adapter record names no method; the file is damaged")
    method = get_method(record["method"])
    fields = {key: value for key, value in record.items() if key not in _RECORD_ONLY_KEYS}
    return method, method.config_class.from_dict(fields)


_RECORD_ONLY_KEYS = {"base_model", "dllm_peft_version", "adapted_modules", "training", "imported_from"}


def load_adapter(backbone: Backbone, path: str | Path) -> dict[str, Any]:
    """Inject the adapter stored at `path` into `backbone.model` and load its tensors. Returns its record."""
    record, tensors = read_adapter(path)
    method, config = config_from_record(record)
    if issubclass(method.layer_class, AdapterLayer):
        check_adapted_modules(backbone, record, path)
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


def check_adapted_modules(backbone: Backbone, record: Record, path: str | Path) -> None:
    """Refuse, in one sentence that lists the model's linear layers, an adapter naming modules the model lacks."""
    linears = linear_layer_names(backbone.model)
    missing = [name for name in record.get("adapted_modules") or [] if name not in set(linears)]
    if missing:
        patterns = sorted(dict.fromkeys(re.sub(r"\.\d+\.", ".N.", name) for name in linears))
        raise DllmPeftError(
            f"the adapter {str(path)!r} adapts {len(missing)} module(s) that {backbone.name!r} does not have (first: "
            f"{missing[0]!r}); its linear layers are: {', '.join(patterns)} (N = layer number); load the adapter "
            "on the model it was trained on (--model)"
        )


def _fail_and_unload(backbone: Backbone, message: str) -> None:
    unload(backbone.model)
    raise DllmPeftError(message)
