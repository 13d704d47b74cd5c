"""Target modules: which linear layers of a model an adapter wraps, chosen by name suffix or regex.

Lives with the models (the backbone's default targets are checked against its own layers when it loads); the adapter
framework (`adapters/base.py`) resolves `--targets` with the same functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from ..errors import DllmPeftError


def matches_target(target: str, name: str) -> bool:
    """Whether module `name` is selected by `target`: equal, a dotted suffix of it, or a regex matching it whole."""
    if name == target or name.endswith("." + target):
        return True
    try:
        return re.fullmatch(target, name) is not None
    except re.error:
        return False


def output_head_name(model: nn.Module) -> str | None:
    """Full module name of the LM head, found by identity through `get_output_embeddings` when available."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is not None:
        for name, module in model.named_modules():
            if module is head:
                return name
    names = [name for name, _ in model.named_modules()]
    for candidate in ("lm_head", "model.transformer.ff_out", "transformer.ff_out"):
        if candidate in names:
            return candidate
    return None


def _names_head_explicitly(target: str, head: str) -> bool:
    return target == head or ("." in target and head.endswith("." + target))


def linear_layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def resolve_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Full names of the linear layers selected by `targets`; raises for targets that select nothing."""
    targets = list(targets)
    head = output_head_name(model)
    linears = linear_layer_names(model)
    chosen: list[str] = []
    unmatched = []
    for target in targets:
        hits = [
            name
            for name in linears
            if matches_target(target, name) and (name != head or _names_head_explicitly(target, head))
        ]
        if not hits:
            unmatched.append(target)
        chosen.extend(hit for hit in hits if hit not in chosen)
    if unmatched:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise DllmPeftError(
            f"target module(s) {unmatched} match no linear layer of this model; "
            f"its linear layers end in: {', '.join(suffixes)}"
        )
    return [name for name in linears if name in chosen]
