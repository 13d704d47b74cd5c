"""`benchmarks/miniature/`: budget matching (nearest size by bisection, measured counts) and the NaRA-vs-LoRA verdict."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks" / "miniature"


def load(name: str):
    """A module of the benchmark folder under a unique name (other benchmarks also have a `run.py`)."""
    spec = importlib.util.spec_from_file_location(f"miniature_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # run.py puts its own folder on sys.path, for its `budgets` import
    return module


verdict = load("run").verdict
budgets = load("budgets")
nearest_size, trainable_count, trajectory_ranks = budgets.nearest_size, budgets.trainable_count, budgets.trajectory_ranks


def lora(rank: int) -> int:
    return 4096 * rank  # LoRA on dllm-tiny's 16 attention projections (128 → 128): r·(128 + 128) each


def test_nearest_size_picks_the_closest_count_and_the_smaller_on_a_tie():
    assert nearest_size(213_824, lora, 256) == 52  # 212,992 is 832 below; 53 would be 3,264 above
    assert nearest_size(4096 * 10 + 2048, lora, 256) == 10  # exactly between 10 and 11: no method gets more
    assert nearest_size(1, lora, 256) == 1 and nearest_size(10**9, lora, 256) == 256  # clamped to the range
    calls = []
    nearest_size(213_824, lambda rank: calls.append(rank) or lora(rank), 256)
    assert len(calls) <= 10  # bisection, not a scan of 256 ranks


def test_counts_come_from_the_injected_adapter():
    assert trainable_count("lora", 8, ()) == 4096 * 8
    # NaRA counts its hypernetwork: 64 → 256 → 512 → r² (181,056 at r = 8) plus 4,096 per rank
    assert trainable_count("nara", 8, ()) == 181_056 + 4096 * 8
    assert trajectory_ranks(104) == (None, ("ranks=64,32,8",))  # the paper's ranks at their own sum
    assert trainable_count("trajectory", *trajectory_ranks(104)) == 66_560


def test_verdict_weighs_the_difference_of_means_by_the_pooled_seed_spread():
    inside = verdict({"mean": 40.0, "std": 6.0}, {"mean": 36.0, "std": 8.0})
    assert inside["nara_minus_lora"] == 4.0 and inside["pooled_std"] == 50**0.5  # √((36 + 64) / 2)
    assert inside["text"].startswith("NaRA is ahead of LoRA by less than the seed spread")
    clear = verdict({"mean": 16.0, "std": 6.0}, {"mean": 36.0, "std": 8.0})
    assert clear["text"].startswith("NaRA trails LoRA by more than 2 pooled standard deviations")
    assert verdict({"mean": 3.0, "std": 0.0}, {"mean": 3.0, "std": 0.0})["difference_in_pooled_std"] is None
