"""FSDP for `dllm-peft train`: the frozen base sharded across processes with FSDP2 (`fully_shard`), the adapter trained.

A launch asks for it with accelerate's FSDP settings (`accelerate launch --use_fsdp …` or a config file with
`distributed_type: FSDP`, such as `dllm_peft/accelerate_configs/fsdp_llada_8b.yaml`); both set ACCELERATE_USE_FSDP.
dllm-peft then shards the model itself instead of handing it to accelerate's FSDP plugin, for three reasons:
  1. accelerate applies FSDP on GPUs only (on CPU the same launch falls back to DDP-style MULTI_CPU), so sharding here
     is one code path on CPU and GPU, and the CPU one is tested (2 processes, gloo: `tests/test_fsdp.py`);
  2. λ routing runs NaRA's hypernetwork, which lives on the model root (`model.dllm_peft_router`), *before* the
     model's forward; the root unit's parameters must therefore be gathered first (`gather_root`);
  3. checkpoints and the final adapter need the adapter's tensors only: they are gathered one by one
     (`full_tensors`), never the 16 GB base.

Units: every transformer block (the classes the model lists in `_no_split_modules`, e.g. `LLaDALlamaBlock`, or
`fsdp_transformer_layer_cls_to_wrap`) is one FSDP unit holding its frozen base weights and its adapter tensors; the
root unit holds the rest (embeddings, final norm, LM head, the router). FSDP2 stores each parameter as a DTensor
sharded on dim 0 and lets frozen and trainable, bf16 and fp32 parameters share a unit, so FSDP1's `use_orig_params`
question does not arise. Gradients are averaged over processes as DDP averages them, so N processes × grad-accum g
train what 1 process × N·g trains.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import DllmPeftError

try:  # FSDP2: torch >= 2.6 (tested with 2.13)
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # an older torch trains without FSDP; `shard` says what to upgrade
    FSDPModule = DTensor = fully_shard = distribute_tensor = None

# accelerate's FSDP settings that dllm-peft refuses rather than silently ignores (each with the fix).
_REFUSED = {
    "FSDP_OFFLOAD_PARAMS": "fsdp_offload_params (CPU offload) is not supported by dllm-peft train; set it to false",
    "FSDP_ACTIVATION_CHECKPOINTING": (
        "fsdp_activation_checkpointing is not used by dllm-peft train (it would lose the noise level when blocks are "
        "recomputed); set it to false and pass --gradient-checkpointing instead"
    ),
}


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was given FSDP settings (`--use_fsdp` or `distributed_type: FSDP`)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def reshard_after_forward() -> bool:
    """FULL_SHARD (reshard after forward, the default) or SHARD_GRAD_OP (keep gathered until backward)."""
    if "FSDP_RESHARD_AFTER_FORWARD" in os.environ:  # accelerate's FSDP2 setting
        return _flag("FSDP_RESHARD_AFTER_FORWARD")
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()  # accelerate's FSDP1 setting
    if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "1", "2"):
        raise DllmPeftError(
            f"fsdp_sharding_strategy {strategy} is not supported by dllm-peft train; use FULL_SHARD or SHARD_GRAD_OP"
        )
    return strategy in ("FULL_SHARD", "1")


def block_classes(model: nn.Module) -> set[str]:
    """Class names of the modules that become FSDP units: the launch's list, else the model's `_no_split_modules`."""
    requested = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    names = {name.strip() for name in requested.split(",") if name.strip()}
    names = names or set(getattr(model, "_no_split_modules", None) or ())
    present = {type(module).__name__ for module in model.modules()}
    if not names & present:
        raise DllmPeftError(
            f"no module of {type(model).__name__} is of the block class(es) {sorted(names) or '(none given)'} to "
            "shard; set fsdp_transformer_layer_cls_to_wrap to the model's transformer block class"
        )
    return names


def shard(model: nn.Module, device: torch.device) -> int:
    """Shard `model` in place over all processes: one FSDP unit per block, then the root. Returns the block count.

    Call it after the adapter is injected (and gradient checkpointing enabled), before the optimizer is built: the
    parameters become DTensors. A model on the CPU is moved to `device` unit by unit, so a GPU never holds more than
    one gathered block beside its shards.
    """
    if fully_shard is None:
        raise DllmPeftError(f"FSDP needs torch >= 2.6 (FSDP2), this is {torch.__version__}; upgrade torch")
    for name, message in _REFUSED.items():
        if _flag(name):
            raise DllmPeftError(message)
    classes = block_classes(model)
    mesh = torch.distributed.device_mesh.init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    reshard = reshard_after_forward()
    blocks = [module for module in model.modules() if type(module).__name__ in classes]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return len(blocks)


def is_sharded(model: nn.Module) -> bool:
    return FSDPModule is not None and isinstance(model, FSDPModule)


def gather_root(model: nn.Module) -> None:
    """Gather the root unit's parameters (the router's hypernetwork among them) before λ routing runs it.

    FSDP gathers a unit in its forward pre-hook, but `noise_level(model, λ)` computes NaRA's core C(λ) before the
    model's forward. The root stays gathered until its backward (FSDP does not reshard the root after forward), so
    the core's gradient reaches the root's shards as every other gradient does. A no-op for an unsharded model.
    """
    if is_sharded(model):
        model.unshard()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP's `no_sync`: gradients of micro-batches before the last accumulate locally, the last one reduces them."""
    model.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every sharded tensor gathered whole (a collective: every process calls it with the same keys in order)."""
    return {name: full_tensor(value) for name, value in tensors.items()}


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor().detach() if DTensor is not None and isinstance(value, DTensor) else value.detach()


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of the whole tensor `value`, laid out as the sharded `like` (no communication)."""
    if DTensor is None or not isinstance(like, DTensor) or isinstance(value, DTensor) or value.shape != like.shape:
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients of (sharded) parameters to a total norm of `max_norm`; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return float(full_tensor(norm))
