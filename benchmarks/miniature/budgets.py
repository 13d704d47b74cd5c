"""Matched trainable budgets: for each method, the rank (or rank schedule) whose trainable count is nearest a target.

The target is NaRA's own count at a small rank, hypernetwork included (64 → 256 → 512 → r², 181,056 parameters
before any factor). Every other method's count is measured, not derived: the adapter is injected into the real
`dllm-tiny` and its trainable tensors are summed, exactly as `dllm-peft train` builds it (`adapters.registry.train_method_config`
parses the same `--adapter-option` strings the run is given). Counts grow with the rank, so a bisection finds the
nearest rank in a few injections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from dllm_peft.adapters.base import inject, trainable_parameters
from dllm_peft.adapters.options import adapter_settings
from dllm_peft.adapters.registry import build_adapter_config, get_method
from dllm_peft.models import load_backbone

MODEL = "dllm-tiny"
TRAJECTORY_SHAPE = (64, 32, 8)  # LoRA-Diffusion's default ranks, early / middle / late; scaled as a whole


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method of the comparison and how its size is turned: `size` ↦ (--rank or None, --adapter-option strings)."""

    method: str
    label: str
    settings: Callable[[int], tuple[int | None, tuple[str, ...]]]
    largest: int = 256  # the largest size tried


def plain_rank(size: int) -> tuple[int, tuple[str, ...]]:
    return size, ()


def multilora_rank(size: int) -> tuple[int, tuple[str, ...]]:
    return size, ("bins=4",)  # the NaRA paper's K = 4 bins, each a LoRA of rank `size`


def trajectory_ranks(size: int) -> tuple[None, tuple[str, ...]]:
    """Ranks in LoRA-Diffusion's 64:32:8 proportion whose sum is about `size` (each at least 1)."""
    total = sum(TRAJECTORY_SHAPE)
    ranks = [max(1, round(size * part / total)) for part in TRAJECTORY_SHAPE]
    return None, ("ranks=" + ",".join(map(str, ranks)),)  # --rank does not apply to it


ARMS = (
    Arm("lora", "LoRA", plain_rank),
    Arm("nara", "NaRA", plain_rank, largest=64),
    Arm("nara-c", "NaRA-C", plain_rank),
    Arm("multilora", "Multi-LoRA", multilora_rank, largest=64),
    Arm("dora", "DoRA", plain_rank),
    Arm("nara-dora", "NaRA-DoRA", plain_rank, largest=64),
    Arm("hira", "HiRA", plain_rank),
    Arm("trajectory", "LoRA-Diffusion", trajectory_ranks, largest=1024),
)


def trainable_count(method: str, rank: int | None, options: tuple[str, ...]) -> int:
    """Trainable parameters of `method` at `rank` with `options`, injected into a fresh `dllm-tiny`."""
    backbone = load_backbone(MODEL, "auto", "cpu", False)
    config = build_adapter_config(method, rank=rank, **adapter_settings(method, options))  # rank None: not set
    inject(backbone.model, config, get_method(method).layer_class, backbone.default_targets)
    return sum(parameter.numel() for parameter in trainable_parameters(backbone.model))


def nearest_size(target: int, count: Callable[[int], int], largest: int) -> int:
    """The size in [1, largest] whose count is nearest `target`, for a `count` that never decreases with the size.

    Bisection for the smallest size whose count reaches the target, then the closer of it and the size below
    (a tie goes to the smaller one, so no method is given more than the target on a tie).
    """
    low, high = 1, largest
    while low < high:
        middle = (low + high) // 2
        if count(middle) >= target:
            high = middle
        else:
            low = middle + 1
    if low > 1 and target - count(low - 1) <= count(low) - target:
        return low - 1
    return low


def match(arm: Arm, target: int) -> dict:
    """The arm's settings nearest the target budget, with their count and its ratio to the target."""
    cache: dict[int, int] = {}

    def count(size: int) -> int:
        if size not in cache:
            cache[size] = trainable_count(arm.method, *arm.settings(size))
        return cache[size]

    size = nearest_size(target, count, arm.largest)
    rank, options = arm.settings(size)
    return {"method": arm.method, "label": arm.label, "rank": rank, "options": options, "count": count(size),
            "ratio": count(size) / target}
