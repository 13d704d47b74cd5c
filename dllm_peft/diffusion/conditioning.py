"""Noise-level routing: the one way the diffusion noise level λ reaches adapter layers.

λ is defined once for the whole project: the fraction of a sequence's response region that is masked (training: k/L
of the masked-diffusion loss; sampling: the share of response positions still masked; likelihood: k/L).

A model with noise-aware adapters carries one `NoiseRouter` submodule (attribute `dllm_peft_router`). It owns the
modules that are shared by every adapted layer (NaRA's hypernetwork, for example) and, while a forward pass runs
inside `with noise_level(model, λ):`, it holds λ per sample and every value derived from it. Derived values (such as
NaRA's core C(λ)) are computed once per forward, eagerly and in float32, then read by every layer.

Gradient checkpointing recomputes a block's forward during backward, after the `with` block has exited. The router
therefore hands `torch.utils.checkpoint` a `context_fn` that snapshots λ and the derived values when the block first
runs and reinstalls them while it is recomputed (`enable_gradient_checkpointing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from ..errors import DllmPeftError

ROUTER_ATTRIBUTE = "dllm_peft_router"


class NoiseLevelMissing(DllmPeftError):
    """A noise-aware adapter ran outside `with noise_level(model, λ):`."""


class SharedNoiseModule(Protocol):
    """What a module shared through the router provides (e.g. NaRA's hypernetwork)."""

    needs_noise_level: bool

    def __call__(self, noise_level: torch.Tensor | None) -> torch.Tensor: ...


class NoiseRouter(nn.Module):
    """Holds the shared noise-aware modules of one model and, during a forward, λ and what is derived from it."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.ModuleDict()
        self._noise_level: torch.Tensor | None = None  # (B,) float32
        self._derived: dict[str, torch.Tensor] = {}
        self._anchor: tuple[int, nn.Module, str] | None = None  # (shared modules, owner, name) of the first parameter

    def device(self) -> torch.device | None:
        """The device of the shared modules (of their first parameter), None when they have no parameter.

        Read per forward, so the parameter's owner and name are found once and its current tensor read each time
        (`.to()` and assigned state dicts are followed; adding a shared module finds it again).
        """
        if self._anchor is None or self._anchor[0] != len(self.shared):
            name = next((name for name, _ in self.named_parameters()), None)
            if name is None:
                return None
            path, _, leaf = name.rpartition(".")
            self._anchor = (len(self.shared), self.get_submodule(path), leaf)
        parameter = self._anchor[1]._parameters.get(self._anchor[2])
        if parameter is None:  # the parameter was removed: look again
            self._anchor = None
            return self.device()
        return parameter.device

    # -- state ----------------------------------------------------------------------------------------------------
    def route(self, noise_level: torch.Tensor | None) -> None:
        """Install λ (shape (B,)) and compute every shared module's output once for this forward."""
        self.__dict__["_noise_level"] = noise_level  # per forward: past `Module.__setattr__`'s checks (a plain value)
        self._derived.clear()  # snapshots hold copies
        if noise_level is None:
            return
        for name, module in self.shared._modules.items():  # the dict itself: `ModuleDict.items()` builds a list
            self._derived[name] = module(noise_level)

    def clear(self) -> None:
        self.__dict__["_noise_level"] = None
        self._derived.clear()

    def snapshot(self) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        return self._noise_level, dict(self._derived)

    def restore(self, state: tuple[torch.Tensor | None, dict[str, torch.Tensor]]) -> None:
        self._noise_level, self._derived = state[0], dict(state[1])

    # -- reads by adapter layers ----------------------------------------------------------------------------------
    def noise_level(self, batch_size: int) -> torch.Tensor:
        """λ per sample, shape (batch_size,); a single λ is broadcast to the batch."""
        if self._noise_level is None:
            raise NoiseLevelMissing(
                "this adapter depends on the noise level, but the forward pass ran without one; "
                "wrap it in `with dllm_peft.diffusion.conditioning.noise_level(model, λ):`"
            )
        return _fit_batch(self._noise_level, batch_size)

    def derived(self, name: str, batch_size: int) -> torch.Tensor:
        """The output of shared module `name` for this forward, with a leading batch dimension that broadcasts."""
        value = self._derived.get(name)
        if value is not None:
            return value if value.shape[0] == 1 else _fit_batch(value, batch_size)
        module = self.shared[name]
        if module.needs_noise_level:
            self.noise_level(batch_size)  # raises the clear error
        return module(None)

    @contextlib.contextmanager
    def _reinstalled(self, state: tuple[torch.Tensor | None, dict[str, torch.Tensor]]) -> Iterator[None]:
        previous = self.snapshot()
        self.restore(state)
        try:
            yield
        finally:
            self.restore(previous)

    def checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """`context_fn` for non-reentrant `torch.utils.checkpoint`: recompute sees the λ of the original forward."""
        return contextlib.nullcontext(), self._reinstalled(self.snapshot())


def _fit_batch(value: torch.Tensor, batch_size: int) -> torch.Tensor:
    if value.shape[0] in (1, batch_size):
        return value
    raise DllmPeftError(
        f"the noise level holds {value.shape[0]} values but the batch has {batch_size} sequences; "
        "pass one λ per sequence or a single λ"
    )


def find_router(model: nn.Module) -> NoiseRouter | None:
    router = getattr(model, ROUTER_ATTRIBUTE, None)
    return router if isinstance(router, NoiseRouter) else None


def as_noise_level(level: float | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """λ as a float32 tensor of shape (B,); checks that every value lies in [0, 1]."""
    tensor = torch.as_tensor(level, dtype=torch.float32).reshape(-1)
    if batch_size is not None and tensor.numel() == 1:
        tensor = tensor.expand(batch_size)
    values = tensor.tolist()  # (B,) small: checked in Python, cheaper per forward than four tensor operations
    if not all(0.0 <= value <= 1.0 for value in values):  # NaN fails both comparisons
        raise DllmPeftError(f"noise level must lie in [0, 1], got {values[:4]}; λ is the masked fraction")
    return tensor


def noise_level(model: nn.Module, level: float | torch.Tensor | None) -> contextlib.AbstractContextManager[None]:
    """Run the forward passes inside this block at noise level `level` (a float or one value per sequence).

    Models without noise-aware adapters ignore it, so callers (loss, sampler, likelihood) always use it. (A class, not
    a generator: the sampler enters it once per forward, and this costs a few microseconds less each time.)
    """
    router = find_router(model)
    return contextlib.nullcontext() if router is None else _Routed(router, level)


class _Routed:
    """The block of `noise_level` on a model that has a router: λ on the router's device, routed, then cleared."""

    __slots__ = ("level", "router")

    def __init__(self, router: NoiseRouter, level: float | torch.Tensor | None):
        self.router, self.level = router, level

    def __enter__(self) -> None:
        level = None if self.level is None else as_noise_level(self.level)
        device = self.router.device()
        self.router.route(level if level is None or device is None else level.to(device))

    def __exit__(self, *exc: object) -> None:
        self.router.clear()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on gradient checkpointing in a way that keeps λ available when blocks are recomputed."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise DllmPeftError(f"{type(model).__name__} does not support gradient checkpointing; drop the flag")
    kwargs: dict[str, object] = {"use_reentrant": False}
    router = find_router(model)
    if router is not None:
        kwargs["context_fn"] = router.checkpoint_contexts
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed the method
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
