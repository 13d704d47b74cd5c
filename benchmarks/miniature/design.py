"""The statistics of the miniature comparison: paired differences over seeds, their intervals, and the design's power.

Within a seed every method sees the same training stream and masks (`dllm-peft train` seeds both from `--seed`) and
is scored on the same test items with the same Monte-Carlo masks, so the per-seed difference between a method and
LoRA cancels the seed's luck of the draw. The interval is Student's t over the n per-seed differences:

    d̄ ± t_{0.975, n−1} · s_d / √n

The smallest difference the design can detect (two-sided α = 0.05, power 0.8) is, for a paired t-test with the
observed standard deviation s_d of the differences, about (t_{0.975, n−1} + t_{0.8, n−1}) · s_d / √n.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

ALPHA = 0.05
POWER = 0.8


def paired_difference(method: list[float], reference: list[float]) -> dict:
    """Mean of `method − reference` over seeds (paired by position) with its 95 % t-interval.

    Returns:
        {"n", "mean", "std", "low", "high", "contains_zero", "decided"}; low/high are None with fewer than 2 seeds;
        `decided`: the interval excludes 0 and has a width (a claim may be made).
    """
    differences = [a - b for a, b in zip(method, reference, strict=True)]
    n = len(differences)
    mean = statistics.mean(differences)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None, "contains_zero": True, "decided": False}
    std = statistics.stdev(differences)
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half,
            "contains_zero": bool(mean - half <= 0 <= mean + half),
            # every seed gave the same difference (coarse test sets do that): the interval is a point, not evidence
            "decided": bool(std > 0 and not mean - half <= 0 <= mean + half)}


def detectable_difference(std: float, n: int) -> float | None:
    """The paired difference a design of `n` seeds detects with power 0.8 at α = 0.05, for differences of spread `std`."""
    if n < 2:
        return None
    return float(stats.t.ppf(1 - ALPHA / 2, n - 1) + stats.t.ppf(POWER, n - 1)) * std / math.sqrt(n)


def seeds_needed(std: float, difference: float, most: int = 100) -> int | None:
    """The fewest seeds (≥ 2) whose detectable difference is at most `difference`; None beyond `most`."""
    for n in range(2, most + 1):
        if detectable_difference(std, n) <= difference:
            return n
    return None


def steps_to_fraction(losses: list[float], fraction: float = 0.9, window: int = 20) -> int | None:
    """The first step at which the smoothed training loss has made `fraction` of its whole drop.

    The loss is a moving average over `window` steps (a single step's loss is noisy); the drop is from the first
    window's mean to the last window's. None when the loss did not drop.
    """
    if len(losses) < window:
        return None
    smoothed = [statistics.mean(losses[i : i + window]) for i in range(len(losses) - window + 1)]
    start, final = smoothed[0], smoothed[-1]
    if not start > final:
        return None
    goal = start - fraction * (start - final)
    for position, value in enumerate(smoothed):
        if value <= goal:
            return position + window  # the step that completes the window
    return len(losses)


def verdict(label: str, difference: dict, unit: str, higher_is_better: bool = True) -> str:
    """One sentence: the paired difference to LoRA, and a claim only where its interval excludes 0."""
    if difference["low"] is None:
        return f"{label} − LoRA = {difference['mean']:+.2f} {unit} (n = {difference['n']}; no interval from one seed)"
    interval = f"{difference['mean']:+.2f} {unit}, 95 % CI [{difference['low']:+.2f}, {difference['high']:+.2f}], n = {difference['n']}"
    if difference["std"] == 0:
        return f"{label} − LoRA: {interval}: every seed gave the same difference, no spread to weigh: no claim"
    if difference["contains_zero"]:
        return f"{label} − LoRA: {interval}: no difference detectable"
    ahead = (difference["mean"] > 0) == higher_is_better
    return f"{label} {'beats' if ahead else 'trails'} LoRA: {interval}"
