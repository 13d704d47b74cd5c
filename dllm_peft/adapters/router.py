"""LoRA-Diffusion's multi-task composition (§3.4): trained task adapters mixed by a learned router at sampling time.

    h ← h + Σ_j w_j · Σ_i σ(λ) g_ij(h, λ),    w = softmax(Router(Enc(c)))

Router: a 2-layer MLP with 512 hidden units over the task embedding Enc(c), returning one softmax weight per task.
Enc(c) is the mean of the frozen base's final hidden states over the *visible content* positions of the running
forward: real tokens (attention mask 1) that are neither the mask token nor EOS. At the first sampling step those are
exactly the instruction c (Algorithm 1 computes w from c alone); later they also hold the committed words of the
answer, which only add evidence. Masked positions are left out because their number (`gen_length`) would shift the
weights, and EOS because it pads every task's answer: once committed it would swamp the instruction with a token that
says nothing about the task. A row with no such position pools over all its positions. With a KV cache a forward
computes only part of the canvas; the router then pools over the positions computed. The router's last layer starts
at zero, so an untrained router mixes the tasks evenly.

Usage (`benchmarks/trajectory_router/` runs it end to end; `router_batch`, `train_router` and
`compose_from_files` live in `training/router.py`, since they read data and files):

    compose_from_files(backbone, ["out/uppercase", "out/reverse"])  # training.router: read, then inject
    batches = [router_batch([upper[i:i + 4], reverse[i:i + 4]], gen_length, eos_id) for i in ...]
    train_router(backbone, batches, steps=...)  # only the router trains, to recognise each example's task
    with torch.no_grad(), recorded_router_weights(backbone.model) as weights:
        sample(...)  # weights: one (B, M) tensor per denoising step
    save_adapter(backbone, "out/composed")  # one self-describing file, method "trajectory-router"

The composition is a registered method of its own ("trajectory-router"), so it saves, loads and samples like any
adapter; `dllm-peft train --method trajectory-router` trains the task modules and the router jointly on one mixed
dataset, which is the paper's multi-task training.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import DllmPeftError
from .base import ADAPTER_ATTRIBUTE, ModelAdapter, find_model_adapter, inject
from .trajectory import TrajectoryConfig, TrajectoryResidual, output_head

RESIDUAL_PREFIX = f"{ADAPTER_ATTRIBUTE}.residual."


@dataclasses.dataclass(frozen=True)
class TrajectoryRouterConfig(TrajectoryConfig):
    method = "trajectory-router"

    tasks: int = dataclasses.field(default=2, metadata={"help": "Number M of task adapters the router mixes."})
    router_hidden: int = dataclasses.field(default=512, metadata={"help": "Hidden width of the router MLP."})
    task_names: tuple[str, ...] | None = dataclasses.field(
        default=None, metadata={"help": "A name per task adapter, for reports (set by compose)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tasks < 1 or self.router_hidden < 1:
            raise DllmPeftError(f"tasks and router_hidden must be positive, got {self.tasks} and {self.router_hidden}")
        if self.task_names is not None:
            object.__setattr__(self, "task_names", tuple(self.task_names))
            if len(self.task_names) != self.tasks:
                raise DllmPeftError(f"task_names holds {len(self.task_names)} names for {self.tasks} tasks")


class TaskRouter(nn.Module):
    """Enc(c) → softmax task weights: Linear(d → hidden) → ReLU → Linear(hidden → M), last layer zero-initialised."""

    def __init__(self, width: int, hidden: int, tasks: int):
        super().__init__()
        last = nn.Linear(hidden, tasks)
        nn.init.zeros_(last.weight)  # an untrained router mixes the tasks evenly
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), last)

    def forward(self, hidden: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """Task weights from hidden states (B, T, d) pooled over the `visible` (B, T) positions (None: all).

        Returns:
            (B, M) weights summing to 1 per sequence.
        """
        hidden = hidden.float()
        if visible is None or visible.shape != hidden.shape[:2]:
            visible = torch.ones(hidden.shape[:2], device=hidden.device)
        visible = visible.to(hidden.device, hidden.dtype)
        visible = torch.where(visible.sum(dim=1, keepdim=True) > 0, visible, torch.ones_like(visible))  # (B, T)
        encoding = (hidden * visible[..., None]).sum(dim=1) / visible.sum(dim=1, keepdim=True)  # (B, d): Enc(c)
        return torch.softmax(self.mlp(encoding), dim=-1)


class TrajectoryRouterAdapter(ModelAdapter):
    """M trajectory residuals on the LM head's input, mixed per sequence by the router."""

    needs_noise_level = True

    def __init__(self, model: nn.Module, config: TrajectoryRouterConfig, router):
        super().__init__(model, config, router)
        _, head = output_head(model)
        self.tasks = nn.ModuleList(TrajectoryResidual(config, head.in_features) for _ in range(config.tasks))
        self.task_router = TaskRouter(head.in_features, config.router_hidden, config.tasks)
        self._visible: torch.Tensor | None = None  # (B, T) of the running forward, for pooling
        self._ignored_ids = _mask_and_eos_ids(model)
        self._recordings: list[list[torch.Tensor]] = []

    def attach(self, model: nn.Module) -> list[str]:
        name, head = output_head(model)
        self._hooks.append(model.register_forward_pre_hook(self._remember_visible, with_kwargs=True))
        self._hooks.append(head.register_forward_pre_hook(self._perturb))
        return [name]

    def _remember_visible(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask")
        visible = None
        if input_ids is not None:
            visible = ~torch.isin(input_ids, self._ignored_ids.to(input_ids.device))  # (B, T)
            if attention_mask is not None and attention_mask.shape == input_ids.shape:
                visible &= attention_mask.bool()
        self._visible = visible

    def _perturb(self, head: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # (B, T, d)
        level = self.router.noise_level(hidden.shape[0])
        weights = self.task_router(hidden, self._visible)  # (B, M)
        for recording in self._recordings:
            recording.append(weights)
        residual = sum(weights[:, j, None, None] * task(hidden, level) for j, task in enumerate(self.tasks))
        return (hidden + residual.to(hidden.dtype), *args[1:])

    def regularization(self) -> torch.Tensor:
        return sum(task.regularization() for task in self.tasks)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Collect the router weights of every forward inside the block: a list of (B, M) tensors."""
        weights: list[torch.Tensor] = []
        self._recordings.append(weights)
        try:
            yield weights
        finally:
            self._recordings.remove(weights)


def _mask_and_eos_ids(model: nn.Module) -> torch.Tensor:
    """The mask and EOS ids from the model's config (absent ones skipped): (k,) long."""
    config = getattr(model, "config", None)
    ids: list[int] = []
    for name in ("mask_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        ids += [] if value is None else [value] if isinstance(value, int) else list(value)
    return torch.tensor(ids, dtype=torch.long)


# -- composing trained adapters ---------------------------------------------------------------------------------------
def compose_trajectory_adapters(
    backbone, paths: list[str | Path], loaded: list[tuple[dict, dict[str, torch.Tensor]]]
) -> TrajectoryRouterAdapter:
    """Inject a composition of trained trajectory adapters into `backbone.model`.

    The router composes what it is handed; reading the files is the caller's (`training.router.compose_from_files`).

    Args:
        paths: where each adapter came from, for messages and the task names.
        loaded: each adapter's (record, tensors), as `adapters.files.read_adapter` returns them. All must be
            trajectory adapters with the same settings, trained on this backbone. The router starts untrained
            (even weights); train it with `training.router.train_router`.
    """
    if len(paths) < 2:
        raise DllmPeftError(f"composition needs at least two trajectory adapters, got {len(paths)}")
    first_settings = None
    for path, (record, _) in zip(paths, loaded):
        if record.get("method") != TrajectoryConfig.method:
            method = record.get("method")
            raise DllmPeftError(f"{str(path)!r} holds a {method} adapter; only trajectory adapters compose")
        if record.get("base_model") != backbone.name:
            raise DllmPeftError(f"{str(path)!r} was trained on {record.get('base_model')!r}, not on {backbone.name!r}")
        settings = {field.name: record[field.name] for field in dataclasses.fields(TrajectoryConfig)}
        if first_settings is not None and settings != first_settings:
            differing = sorted(name for name in settings if settings[name] != first_settings[name])
            raise DllmPeftError(
                f"{str(path)!r} differs from {str(paths[0])!r} in {differing}; retrain with equal settings"
            )
        first_settings = settings
    names = tuple(Path(path).name for path in paths)
    config = TrajectoryRouterConfig.from_dict({**first_settings, "tasks": len(paths), "task_names": list(names)})
    inject(backbone.model, config, TrajectoryRouterAdapter)
    adapter = find_model_adapter(backbone.model)
    for task, (_, tensors) in zip(adapter.tasks, loaded):
        own = {key[len(RESIDUAL_PREFIX) :]: value for key, value in tensors.items() if key.startswith(RESIDUAL_PREFIX)}
        task.load_state_dict(own, strict=True)
    return adapter


@contextlib.contextmanager
def recorded_router_weights(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The router weights of every forward of `model` inside the block: a list of (B, M) tensors.

    They are recorded as computed, so record under `torch.no_grad()` (sampling already is) to keep no graph alive.
    """
    adapter = find_model_adapter(model)
    if not isinstance(adapter, TrajectoryRouterAdapter):
        raise DllmPeftError("the model carries no trajectory-router composition whose weights could be recorded")
    with adapter.recording() as weights:
        yield weights
