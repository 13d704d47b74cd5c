"""Registration of `dllm-peft` with lm-eval at interpreter start, so that the plain `lm_eval --model dllm-peft` works.

lm-eval finds a model by name through `lm_eval.api.registry.get_model`. No released lm-eval (0.4.x, 0.5.0.dev1)
reads plugin entry points (the `lm_eval.models` group our package declares is read only by lm-eval's unreleased main
branch), so the package also installs a one-line startup file, `dllm_peft_lm_eval.pth`, that calls `install()`.

`install()` imports nothing heavy: it puts a finder on `sys.meta_path` that waits for `lm_eval.api.registry` to be
imported and then wraps its `get_model`: asked for `dllm-peft`, the wrapper imports `dllm_peft.evaluation.lm` (whose
`@register_model` decorator registers the class) before the lookup. Any other name goes straight to lm-eval; the
registry itself is untouched until `dllm-peft` is asked for, so lm-eval's own models are found exactly as before.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import sys
from types import ModuleType
from typing import Any

MODEL_NAME = "dllm-peft"
MODEL_MODULE = "dllm_peft.evaluation.lm"
REGISTRY_MODULE = "lm_eval.api.registry"


def install() -> None:
    """Make `get_model("dllm-peft")` work in this interpreter, now if lm-eval's registry is loaded, else on import."""
    module = sys.modules.get(REGISTRY_MODULE)
    if module is not None:
        wrap_get_model(module)
    elif not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())


def wrap_get_model(registry: ModuleType) -> None:
    """Replace `registry.get_model` by a wrapper that imports our model module before looking up `dllm-peft`."""
    original = getattr(registry, "get_model", None)
    if original is None or getattr(original, "_dllm_peft_wrapped", False):
        return

    @functools.wraps(original)
    def get_model(model_name: str, *args: Any, **kwargs: Any):
        if model_name == MODEL_NAME:
            importlib.import_module(MODEL_MODULE)  # its decorator registers the class under MODEL_NAME
        return original(model_name, *args, **kwargs)

    get_model._dllm_peft_wrapped = True  # type: ignore[attr-defined]
    registry.get_model = get_model


class _RegistryWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `lm_eval.api.registry` is imported, its loader is wrapped to call `wrap_get_model`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenWrap(spec.loader)
        return spec


class _ThenWrap(importlib.abc.Loader):
    """A loader that runs the real one, then wraps the loaded registry's `get_model`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        wrap_get_model(module)

    def __getattr__(self, name: str):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)
