"""Training data: files or built-in tasks → tokenised prompt/response examples → padded batches.

Sources: `builtin:<task>` (generated in code, see `builtin_tasks.py`), a JSONL file (one object per line), or a JSON
file holding an array of objects. Records use `prompt` / `response` fields by default; the LLM-Adapters layout
(`instruction`, `input`, `output`) is recognised on its own. As in LLaDA's SFT, the response ends with EOS and a
batch is padded with EOS *inside the response region*, so the model learns to fill the tail with EOS.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from .builtin_tasks import task_records
from .errors import DllmPeftError
from .models.backbone import Backbone

BUILTIN_PREFIX = "builtin:"


@dataclasses.dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # ends with EOS

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclasses.dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool, response + EOS padding
    attention_mask: torch.Tensor  # (B, T) all ones: EOS padding is part of the response, as in LLaDA

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclasses.dataclass(frozen=True)
class LengthReport:
    total: int
    overlong: int
    max_length: int
    policy: str


def read_records(source: str) -> list[dict[str, Any]]:
    """The records of `source`: `builtin:<task>`, a `.jsonl` file or a `.json` array."""
    if source.startswith(BUILTIN_PREFIX):
        return task_records(source[len(BUILTIN_PREFIX) :], "train")
    path = Path(source)
    if not path.is_file():
        raise DllmPeftError(f"data file {source!r} does not exist; give a .jsonl/.json file or builtin:<task>")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DllmPeftError(f"{source}:{error.lineno}: not valid JSON ({error.msg})") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DllmPeftError(f"{source}:{number}: not a valid JSON line ({error.msg})") from None
            if not isinstance(records[-1], dict):
                raise DllmPeftError(f"{source}:{number}: expected a JSON object, got {type(records[-1]).__name__}")
    if not records:
        raise DllmPeftError(f"data file {source!r} holds no examples")
    return records


def prompt_response_pairs(
    records: list[dict[str, Any]], prompt_field: str = "prompt", response_field: str = "response"
) -> list[tuple[str, str]]:
    """(prompt, response) text pairs; the LLM-Adapters layout is used when the named fields are absent."""
    first = records[0]
    if prompt_field in first and response_field in first:
        return [(str(r[prompt_field]), str(r[response_field])) for r in records]
    if "instruction" in first and "output" in first:
        return [(_llm_adapters_prompt(r), str(r["output"])) for r in records]
    raise DllmPeftError(
        f"the records have no {prompt_field!r}/{response_field!r} fields (present: {', '.join(sorted(first))}); "
        "name them with --prompt-field / --response-field"
    )


def _llm_adapters_prompt(record: dict[str, Any]) -> str:
    extra = str(record.get("input") or "").strip()
    return str(record["instruction"]) + (f"\n{extra}" if extra else "")


def tokenize_pairs(
    pairs: list[tuple[str, str]], backbone: Backbone, max_length: int, overlong: str = "drop"
) -> tuple[list[Example], LengthReport]:
    """Tokenise and apply the overlong policy (`drop` or `truncate` the response), reporting what it touched."""
    if overlong not in ("drop", "truncate"):
        raise DllmPeftError(f"--overlong must be drop or truncate, got {overlong!r}")
    examples, overlong_count = [], 0
    for prompt, response in pairs:
        prompt_ids = tuple(backbone.encode(prompt))
        response_ids = tuple(backbone.encode(response)) + (backbone.eos_id,)
        if len(prompt_ids) + len(response_ids) > max_length:
            overlong_count += 1
            room = max_length - len(prompt_ids)
            if overlong == "drop" or room < 1:
                continue
            response_ids = response_ids[: room - 1] + (backbone.eos_id,) if room > 1 else (backbone.eos_id,)
        examples.append(Example(prompt_ids, response_ids))
    report = LengthReport(len(pairs), overlong_count, max_length, overlong)
    if not examples:
        raise DllmPeftError(
            f"all {len(pairs)} examples exceed --max-length {max_length}; raise it or use --overlong truncate"
        )
    return examples, report


def collate(examples: list[Example], eos_id: int) -> Batch:
    """Pad to the longest example with EOS, counted as response (LLaDA SFT)."""
    length = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), length), eos_id, dtype=torch.long)
    response_mask = torch.zeros((len(examples), length), dtype=torch.bool)
    for row, example in enumerate(examples):
        tokens = example.prompt_ids + example.response_ids
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        response_mask[row, len(example.prompt_ids) :] = True
    return Batch(input_ids, response_mask, torch.ones_like(input_ids))
