"""Adapter methods, one per file; `base.py` holds the framework they share."""

from .base import (
    AdapterConfig,
    AdapterLayer,
    MethodConfig,
    ModelAdapter,
    adapter_layers,
    adapter_state_dict,
    inject,
    unload,
)

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "MethodConfig",
    "ModelAdapter",
    "adapter_layers",
    "adapter_state_dict",
    "inject",
    "unload",
]
