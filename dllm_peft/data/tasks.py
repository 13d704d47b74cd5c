"""Small fine-tuning tasks generated in code, so `dllm-peft train` works on a fresh machine with no download.

Each task is a deterministic function of (split, count): the train and test splits draw from disjoint seeds, and every
record is `{"prompt", "response", "answer"}` where `answer` is what the evaluator compares against (exact match).

The default task is `lastdigit` ("Last digit: 5383\nAnswer:" → "3"; 10 classes, so a constant answer scores about
10 %). The default model `dllm-tiny` was pretrained on Shakespeare plus the `repeat`, `reverse` and `addition` records
(`benchmarks/default_model/build.py`): it knows the `...\nAnswer:` format but has never seen `lastdigit`, and it
starts near 0 %; a NaRA adapter must learn to copy the digit that sits a fixed distance before the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import DllmPeftError

WORDS = (
    "apple river stone cloud green music paper light house water garden silver ocean forest bread candle "
    "window mirror summer winter planet rocket violin tiger yellow orange purple castle dragon island"
).split()

SPLIT_SEEDS = {"train": 1234, "validation": 5678, "test": 9012}


def _uppercase(rng: random.Random) -> dict[str, str]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    return {"prompt": f"Uppercase: {words}\nAnswer:", "response": f" {words.upper()}", "answer": words.upper()}


def _reverse(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    return {"prompt": f"Reverse: {word}\nAnswer:", "response": f" {word[::-1]}", "answer": word[::-1]}


def _repeat(rng: random.Random) -> dict[str, str]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    return {"prompt": f"Repeat: {words}\nAnswer:", "response": f" {words}", "answer": words}


def _addition(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return {"prompt": f"Question: {a} + {b} = ?\nAnswer:", "response": f" {a + b}", "answer": str(a + b)}


def _lastdigit(rng: random.Random) -> dict[str, str]:
    number = str(rng.randint(0, 9999))
    return {"prompt": f"Last digit: {number}\nAnswer:", "response": f" {number[-1]}", "answer": number[-1]}


TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "uppercase": _uppercase,
    "reverse": _reverse,
    "addition": _addition,
    "repeat": _repeat,
    "lastdigit": _lastdigit,
}
DEFAULT_TASK = "lastdigit"


def task_records(name: str, split: str = "train", count: int = 512) -> list[dict[str, str]]:
    """`count` records of built-in task `name` from `split` (train, validation or test)."""
    if name not in TASKS:
        raise DllmPeftError(f"unknown built-in task {name!r}; choose one of: {', '.join(TASKS)}")
    if split not in SPLIT_SEEDS:
        raise DllmPeftError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_SEEDS)}")
    rng = random.Random(SPLIT_SEEDS[split] + 7919 * list(TASKS).index(name))
    return [TASKS[name](rng) for _ in range(count)]
