"""The method registry: every adapter method, registered once, by name.

The CLI's `--method` choices, the `"method"` field of adapter files, `merge`, `inspect` and the test conformance
matrix all read `METHODS`, so adding a method here is the whole of wiring it in.
"""

from __future__ import annotations

import dataclasses

from .adapters.base import AdapterConfig, AdapterLayer
from .adapters.lora import LoraConfig, LoraLayer
from .adapters.nara import NaraCConfig, NaraConfig, NaraLayer
from .errors import DllmPeftError


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered adapter method."""

    name: str
    config_class: type[AdapterConfig]
    layer_class: type[AdapterLayer]
    mergeable: bool  # its update can be folded into the base weights (at a chosen λ if noise_dependent)
    noise_dependent: bool  # its update changes with the noise level λ
    summary: str


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("lora", LoraConfig, LoraLayer, True, False, "static low-rank update B·A"),
        Method("nara", NaraConfig, NaraLayer, True, True, "B·C(λ)·A with a noise-conditioned core"),
        Method("nara-c", NaraCConfig, NaraLayer, True, False, "B·C·A with a learned constant core (ablation)"),
    )
}


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name is an error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise DllmPeftError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


def build_adapter_config(method: str, **settings) -> AdapterConfig:
    """The method's config from `settings`, ignoring those the method does not have (e.g. eta for LoRA)."""
    config_class = get_method(method).config_class
    known = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{key: value for key, value in settings.items() if key in known and value is not None})
