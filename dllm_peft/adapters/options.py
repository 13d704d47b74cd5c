"""`dllm-peft train --adapter-option KEY=VALUE`: a setting of the method's own config, typed by its dataclass field.

`adapter_settings(method, options)` returns {field name: value}; a tuple field takes comma-separated items, a tuple
of tuples `;` between them, an optional field `none`. Settings that have a train flag of their own (`OWN_FLAGS`) are
refused, so that one value has one place. Bad input is one sentence listing the valid keys.
`train_method_config(config)` builds the method config of a whole training run from its flags and these settings.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ..config import TrainConfig
from ..errors import DllmPeftError
from .base import MethodConfig
from .registry import build_adapter_config, get_method

# Method settings with a train flag of their own; --adapter-option refuses them so that one value has one place.
OWN_FLAGS = {"rank": "--rank", "eta": "--eta", "dropout": "--dropout", "target_modules": "--targets"}


def adapter_settings(method: str, options: tuple[str, ...]) -> dict[str, Any]:
    """Parse `--adapter-option KEY=VALUE` strings against the fields of `method`'s config class.

    A tuple field takes comma-separated items (`ranks=16,8,4`), a tuple of tuples `;` between them
    (`groups=q_proj,k_proj;v_proj,attn_out`), an optional field `none`. Returns {field name: typed value}.
    """
    config_class = get_method(method).config_class
    types = typing.get_type_hints(config_class)
    valid = [field.name for field in dataclasses.fields(config_class) if field.name not in OWN_FLAGS]
    keys = f"valid keys for {method}: {', '.join(valid)}" if valid else f"{method} has no settings besides its flags"
    settings: dict[str, Any] = {}
    for text in options:
        key, equals, value = (part.strip() for part in text.partition("="))
        key = key.replace("-", "_")
        if key in OWN_FLAGS:
            raise DllmPeftError(f"--adapter-option {text!r}: {key} has its own flag, pass {OWN_FLAGS[key]} instead")
        if not equals or key not in valid:
            raise DllmPeftError(f"--adapter-option {text!r} is not KEY=VALUE with a known key; {keys}")
        if key in settings:
            raise DllmPeftError(f"--adapter-option sets {key} twice; keep one of them")
        try:
            settings[key] = _typed_value(value, types[key])
        except ValueError:
            raise DllmPeftError(
                f"--adapter-option {text!r}: {value!r} is not {_type_name(types[key])}; {keys}"
            ) from None
    return settings


def _typed_value(text: str, kind: Any) -> Any:
    """`text` converted to the type `kind` (int, float, str, bool, tuples of them, optionals); ValueError if not."""
    kinds = typing.get_args(kind)
    if type(None) in kinds:
        if text.lower() == "none":
            return None
        kind = next(each for each in kinds if each is not type(None))
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        separator = ";" if typing.get_origin(item) is tuple else ","
        items = tuple(_typed_value(part.strip(), item) for part in text.split(separator) if part.strip())
        if not items:
            raise ValueError(text)
        return items
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    if not text:
        raise ValueError(text)
    return kind(text)


def _type_name(kind: Any) -> str:
    """How a value of type `kind` is written, for error messages ("an integer", "comma-separated numbers")."""
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if typing.get_origin(item) is tuple:
            return "comma-separated lists separated by ;"
        return "comma-separated " + {int: "integers", float: "numbers"}.get(item, "names")
    optional = [each for each in typing.get_args(kind) if each is not type(None)]
    if optional:
        return _type_name(optional[0]) + " or none"
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "text")


def train_method_config(config: TrainConfig) -> MethodConfig:
    """The adapter config a training run asks for: --method with --rank, --eta, --dropout, --targets and every
    --adapter-option, each checked by the method's own config (an unknown method or key is one sentence)."""
    get_method(config.method)  # an unknown name fails here, listing the known ones
    settings = adapter_settings(config.method, config.adapter_option)
    try:
        return build_adapter_config(
            config.method, rank=config.rank, eta=config.eta, dropout=config.dropout,
            target_modules=config.target_modules, **settings,
        )
    except DllmPeftError as error:
        if not config.adapter_option:
            raise
        raise DllmPeftError(f"--adapter-option {', '.join(config.adapter_option)}: {error}") from None
