"""Text classification data of the LoRA-Diffusion paper: SST-2 (sentiment) and AG News (topic), as TSV files.

Layouts read (`read_classification_tsv`), with or without a header line:
  * GLUE SST-2: `sentence<TAB>label`, label 0 (negative) or 1 (positive) — GLUE's `train.tsv` / `dev.tsv`;
  * AG News: `text<TAB>label`, label a class name (World, Sports, Business, Sci/Tech) or its number: 0–3 as in the
    Hugging Face `ag_news` dataset, or 1–4 as in the original CSV release when a 4 occurs.
The task is told by the labels: class names, or a 2 / 3 / 4 among numbers, mean AG News; 0 / 1 alone mean SST-2.

Every row becomes a record with the prompt template and the label word as the response (one prompt form for
training, generative evaluation and the multiple-choice context, so an adapter is evaluated on what it learned):

    SST-2     "Review: {sentence}\nSentiment (negative or positive):"                 → negative | positive
    AG News   "Article: {text}\nTopic (World, Sports, Business or Sci/Tech):"         → World | Sports | Business | Sci/Tech

AG News text keeps the escapes of its release (`\\` for a line break, `#39;` for an apostrophe, ...); they are
undone before templating.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ..errors import DllmPeftError


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    name: str
    template: str  # one `{text}` field
    labels: tuple[str, ...]  # label words, in class-number order

    def prompt(self, text: str) -> str:
        return self.template.format(text=text)


SST2 = ClassificationTask("sst2", "Review: {text}\nSentiment (negative or positive):", ("negative", "positive"))
AGNEWS = ClassificationTask(
    "agnews", "Article: {text}\nTopic (World, Sports, Business or Sci/Tech):", ("World", "Sports", "Business", "Sci/Tech")
)
CLASSIFICATION_TASKS = {task.name: task for task in (SST2, AGNEWS)}
HEADER_LABEL = "label"
AG_NEWS_ESCAPES = {"\\": " ", " #39;": "'", "#39;": "'", "#36;": "$", "quot;": '"', "amp;": "&", "#151;": "-"}


def _clean(text: str) -> str:
    for escape, plain in AG_NEWS_ESCAPES.items():
        text = text.replace(escape, plain)
    return re.sub(r"\s+", " ", text).strip()


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(text, label) of every line of a two-column TSV; a header line whose last column is `label` is skipped."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        text, tab, label = line.rpartition("\t")
        if not tab:
            raise DllmPeftError(f"{path}:{number}: expected `text<TAB>label` (the GLUE SST-2 / AG News layout)")
        if number == 1 and label.strip().lower() == HEADER_LABEL:
            continue
        rows.append((text, label.strip()))
    if not rows:
        raise DllmPeftError(f"{path} holds no rows; point --data at a non-empty TSV file")
    return rows


def detect_task(labels: set[str], path: Path) -> tuple[ClassificationTask, dict[str, str]]:
    """The task a set of raw labels belongs to, and the map from raw label to label word."""
    by_word = {word.lower(): word for word in AGNEWS.labels}
    if all(label.lower() in by_word for label in labels):
        return AGNEWS, {label: by_word[label.lower()] for label in labels}
    if all(label.isdigit() for label in labels):
        numbers = {int(label) for label in labels}
        if numbers <= {0, 1}:
            return SST2, {label: SST2.labels[int(label)] for label in labels}
        if numbers <= {0, 1, 2, 3} or numbers <= {1, 2, 3, 4}:
            offset = 1 if 4 in numbers else 0
            return AGNEWS, {label: AGNEWS.labels[int(label) - offset] for label in labels}
    unknown = sorted(labels)[:4]
    raise DllmPeftError(
        f"{path} has labels {unknown} that are neither SST-2's (0/1) nor AG News' (World, Sports, Business, Sci/Tech "
        "or 0-3); give a two-column TSV in the GLUE SST-2 or AG News layout"
    )


def read_classification_tsv(path: Path) -> list[dict[str, Any]]:
    """Records {prompt, response, answer, task, label} of an SST-2 or AG News TSV file (see the module docstring)."""
    rows = read_rows(path)
    task, words = detect_task({label for _, label in rows}, path)
    records = []
    for text, label in rows:
        word = words[label]
        records.append({"prompt": task.prompt(_clean(text)), "response": word, "answer": word, "task": task.name,
                        "label": task.labels.index(word)})
    return records
