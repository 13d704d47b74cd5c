"""Where a training run's settings come from: presets (`--recipe`), settings files (`--config`) and flags.

`resolve_train_config` layers them, later layers winning: the `TrainConfig` defaults < the recipe < the settings file
< the flags the user typed. With `--resume`, the run's own saved settings replace the defaults and the recipe, so
`dllm-peft train --output out --resume` continues a run without repeating its flags.

The recipes are the NaRA authors' released ones (`method-facts.md`): rank 32 on q_proj, k_proj, v_proj, attn_out,
AdamW β (0.9, 0.95), weight decay 0.05, 5 % warm-up, clip 1.0 (those four are fixed in `train.py`), micro-batch 1 ×
grad-accum 32, max length 512 with EOS padding to it, the chat template on the prompt; commonsense_170k at lr 1e-5
for 1 epoch, math_14k at 1e-4 for 10 epochs, code at 1e-4 for 1 epoch. They name no model or data: those are yours.

A settings file is YAML (`.yaml`/`.yml`), TOML (`.toml`) or JSON (`.json`, e.g. a run's own `train_config.json`, so
`--config out/train_config.json --output again` repeats a run) holding one mapping whose keys are the flag names
(`max-steps` or `max_steps`). The run length is one setting: a layer that names `epochs` or `max_steps` replaces
both (naming only `epochs` lifts an earlier `max_steps`), so `--recipe nara-math --max-steps 10` runs 10 steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml

from ..adapters.options import train_method_config
from ..config import TrainConfig
from ..errors import DllmPeftError
from .checkpoint import read_run_config

_REFERENCE = {
    "method": "nara",
    "rank": 32,
    "eta": 0.1,
    "dropout": 0.05,
    "targets": "q_proj,k_proj,v_proj,attn_out",
    "batch_size": 1,
    "grad_accum": 32,
    "max_length": 512,
    "padding": "max_length",
    "noise_draw": "continuous",  # the reference feeds its draw t to the hypernetwork
    "chat_template": "auto",
}

RECIPES: dict[str, dict[str, Any]] = {
    "nara-commonsense": {**_REFERENCE, "lr": 1e-5, "epochs": 1},
    "nara-math": {**_REFERENCE, "lr": 1e-4, "epochs": 10},
    "nara-code": {**_REFERENCE, "lr": 1e-4, "epochs": 1},
}

RUN_LENGTH = ("max_steps", "epochs")
_FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def recipe_settings(name: str) -> dict[str, Any]:
    """The settings of recipe `name`; an unknown name is an error listing the known ones."""
    if name not in RECIPES:
        raise DllmPeftError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def read_settings_file(path: str) -> dict[str, Any]:
    """The settings in a YAML or TOML file, keys normalised to field names and values checked against their types."""
    file = Path(path)
    if not file.is_file():
        raise DllmPeftError(
            f"settings file {path!r} does not exist; pass a .yaml, .toml or train_config.json file to --config"
        )
    from ..data.records import (
        read_utf8,  # the data layer loads torch: only when a settings file is read
    )

    text = read_utf8(file)
    try:
        if file.suffix == ".toml":
            raw = tomllib.loads(text)
        elif file.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        elif file.suffix == ".json":
            raw = json.loads(text)
        else:
            raise DllmPeftError(f"settings file {path!r} must end in .yaml, .yml, .toml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as error:
        raise DllmPeftError(f"{path} is not valid {file.suffix[1:].upper()}: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise DllmPeftError(f"{path} must hold a mapping of flag names to values, not a {type(raw).__name__}")
    settings = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name == "config" and value is None:  # a run's train_config.json records that it had no settings file
            continue
        if name not in _FIELDS or name == "config":
            close = difflib.get_close_matches(name, [f for f in _FIELDS if f != "config"], n=1)
            hint = f"did you mean {close[0].replace('_', '-')}?" if close else "see `dllm-peft train --help`"
            raise DllmPeftError(f"{path}: unknown setting {key!r}; {hint}")
        settings[name] = coerce(name, value, path)
    return settings


def coerce(name: str, value: Any, where: str) -> Any:
    """`value` as the type of field `name` (YAML reads 1e-5 as a string; TOML has no null)."""
    kinds = typing.get_args(_TYPES[name]) or (_TYPES[name],)
    if value is None and type(None) in kinds:
        return None
    if typing.get_origin(_TYPES[name]) is tuple:  # --adapter-option: KEY=VALUE strings, or a mapping of them
        return key_value_strings(name, value, where)
    kind = next(kind for kind in kinds if kind is not type(None))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise DllmPeftError(
            f"{where}: {name.replace('_', '-')} must be {kind.__name__}, got {value!r}; fix that value"
        ) from None


def key_value_strings(name: str, value: Any, where: str) -> tuple[str, ...]:
    """A repeatable KEY=VALUE setting from a file: one string, a list of strings, or a mapping (lists as a,b,c)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict):  # {ranks: [16, 8, 4]} → "ranks=16,8,4"
        return tuple(
            f"{key}={','.join(map(str, item)) if isinstance(item, list) else item}" for key, item in value.items()
        )
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise DllmPeftError(
        f"{where}: {name.replace('_', '-')} must be KEY=VALUE strings or a mapping of keys to values, got {value!r}"
    )


def _apply(settings: dict[str, Any], layer: dict[str, Any]) -> None:
    """Lay `layer` over `settings`; a layer naming one run-length setting clears the other."""
    if any(name in layer for name in RUN_LENGTH):
        for name in RUN_LENGTH:
            settings[name] = None
    settings.update(layer)


def resolve_train_config(explicit: dict[str, Any]) -> TrainConfig:
    """The `TrainConfig` of a run from its layers.

    Args:
        explicit: the settings the user gave on the command line (or in Python), by field name.
    """
    file_settings = read_settings_file(explicit["config"]) if explicit.get("config") else {}
    given = {**file_settings, **explicit}
    saved_run = read_run_config(given.get("output", _FIELDS["output"].default)) if given.get("resume") else None
    settings = {name: field.default for name, field in _FIELDS.items()}
    if saved_run is not None:
        _apply(settings, {name: value for name, value in saved_run.items() if name in _FIELDS})
    else:
        recipe = explicit.get("recipe") or file_settings.get("recipe")
        if recipe:
            _apply(settings, recipe_settings(recipe))
    _apply(settings, file_settings)
    _apply(settings, explicit)
    config = TrainConfig(**settings)
    train_method_config(config)  # the method and its --adapter-option values, before any work
    return config

