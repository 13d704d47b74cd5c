"""The four tasks of the miniature comparison: training records, test items with their candidate answers.

Each task gives `train` records `{"prompt", "response"}` (what `dllm-peft train` reads from a JSONL file) and `test`
items `{"prompt", "response", "candidates", "gold"}`: `candidates` are the answers scored by log-likelihood
(accuracy = the gold one scores highest), `response` is the gold answer as trained, so the held-out masked-diffusion
loss and exact match use the same text.

* `lastdigit` (built-in, `dllm_peft.data.tasks`): one-digit answers; candidates " 0" … " 9".
* `addition` (built-in): multi-token answers (" 57"); candidates the sum and the sum ± 1 and ± 10 (those ≥ 0).
* `sst2`: GLUE SST-2 (train split for training, the 872-sentence validation split as test); " positive"/" negative".
* `agnews`: AG News (the 10,001-row train subset for training, a class-balanced part of the test split as test);
  " World", " Sports", " Business", " Sci/Tech".

SST-2 and AG News are read from `--data-dir` (tab-separated files, `shared/data/SOURCES.md`): the package has no
reader of them yet. Their texts are cut at a word boundary to `TEXT_CHARS` characters, because `dllm-tiny` reads
256 tokens at most (one byte is one token) and a CPU run must stay short; the cut is the same for every method.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from dllm_peft.data.tasks import task_records

TEXT_CHARS = 64  # longest review or news text kept, in characters (= tokens of dllm-tiny's byte tokenizer)
SST2_LABELS = {"0": " negative", "1": " positive"}
AGNEWS_LABELS = (" World", " Sports", " Business", " Sci/Tech")
TASKS = ("lastdigit", "addition", "sst2", "agnews")


def cut(text: str, limit: int = TEXT_CHARS) -> str:
    """`text` with whitespace collapsed, cut at the last word boundary before `limit` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    return head[: head.rfind(" ")] if " " in head else head


def read_tsv(path: Path, header: bool) -> list[tuple[str, str]]:
    """(text, label) rows of a two-column tab-separated file."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row[0], row[1]) for row in rows[1 if header else 0 :] if len(row) >= 2]


def builtin(name: str, train_count: int, test_count: int) -> dict:
    """A built-in task: train records and test items with candidate answers."""
    train = [{"prompt": r["prompt"], "response": r["response"]} for r in task_records(name, "train", train_count)]
    test = []
    for record in task_records(name, "test", test_count):
        if name == "lastdigit":
            candidates = [f" {digit}" for digit in range(10)]
        else:  # addition: near misses of the sum, so the ranking is about arithmetic, not about the format
            total = int(record["answer"])
            candidates = [f" {value}" for value in (total, total + 1, total - 1, total + 10, total - 10) if value >= 0]
        test.append({"prompt": record["prompt"], "response": record["response"], "candidates": candidates,
                     "gold": record["response"]})
    return {"train": train, "test": test}


def sst2(data_dir: Path, train_count: int, test_count: int | None) -> dict:
    """SST-2: `train_count` training sentences drawn at random (fixed seed); the first `test_count` of the validation
    split as test (None: all 872)."""
    rows = read_tsv(data_dir / "sst2" / "train.tsv", header=True)
    random.Random(23).shuffle(rows)
    train = [{"prompt": f"Review: {cut(text)}\nSentiment:", "response": SST2_LABELS[label]}
             for text, label in rows[:train_count]]
    dev = read_tsv(data_dir / "sst2" / "dev.tsv", header=True)[:test_count]
    test = [{"prompt": f"Review: {cut(text)}\nSentiment:", "response": SST2_LABELS[label],
             "candidates": list(SST2_LABELS.values()), "gold": SST2_LABELS[label]} for text, label in dev]
    return {"train": train, "test": test}


def agnews(data_dir: Path, train_count: int, test_count: int) -> dict:
    """AG News: training rows from the train subset, `test_count` test rows, the same number of each class."""
    rows = read_tsv(data_dir / "agnews" / "train-subset.tsv", header=False)
    rows = [row for row in rows if f" {row[1]}" in AGNEWS_LABELS]
    random.Random(23).shuffle(rows)
    train = [{"prompt": f"News: {cut(text)}\nTopic:", "response": f" {label}"} for text, label in rows[:train_count]]
    per_class = {label: [] for label in AGNEWS_LABELS}
    for text, label in read_tsv(data_dir / "agnews" / "test.tsv", header=False):
        bucket = per_class.get(f" {label}")
        if bucket is not None and len(bucket) < test_count // len(AGNEWS_LABELS):
            bucket.append(text)
    test = [{"prompt": f"News: {cut(text)}\nTopic:", "response": label, "candidates": list(AGNEWS_LABELS),
             "gold": label} for label, texts in per_class.items() for text in texts]
    return {"train": train, "test": test}


def load_task(name: str, data_dir: Path, train_count: int, test_count: int | None) -> dict:
    """The task called `name` (one of TASKS); `test_count` None: SST-2's whole validation split."""
    if name in ("lastdigit", "addition"):
        return builtin(name, train_count, test_count)
    if name == "sst2":
        return sst2(data_dir, train_count, test_count)
    if name == "agnews":
        return agnews(data_dir, train_count, test_count)
    raise ValueError(f"unknown miniature task {name!r}; choose one of {', '.join(TASKS)}")
