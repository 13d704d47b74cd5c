"""Training data: a source → records → (prompt, response) pairs → tokenised examples → EOS-padded batches.

Sources (`read_records`): `builtin:<task>` (generated in code, `data/tasks.py`), a JSONL file (one object per
line), a JSON file holding an array of objects, a local Hugging Face `datasets` directory (written by
`save_to_disk`, or a folder of data files) or a hub dataset name when the machine is online. Records use `prompt` /
`response` fields by default; the LLM-Adapters layout (`instruction`, `input`, `output`) is recognised on its own, and
a `.tsv` file in the GLUE SST-2 (`sentence<TAB>label`) or AG News (`text<TAB>label`) layout becomes prompt/response
records through the documented template and label words (`classification.py`).

As in LLaDA's SFT (and the NaRA recipes): the prompt goes through the tokenizer's chat template when it has one, the
response ends with EOS, and EOS padding is part of the response region, so the model learns to fill the tail of a
canvas with EOS. The region is padded per example to a multiple of a canvas length (`--padding N`; the default, 32,
is the canvas `dllm-peft eval` uses on the built-in tasks; `canvas` is the sampler's default `--gen-length`, so that
every λ = k / gen_length the sampler routes is a λ = k' / L training routes, see docs/noise-level.md), to the batch's
longest example, or to `max_length` as the reference does. Examples longer than
`max_length` are never dropped silently: `tokenize_pairs` counts them in a `LengthReport`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .classification import read_classification_tsv
from .tasks import task_records

BUILTIN_PREFIX = "builtin:"
OVERLONG_POLICIES = ("drop", "truncate")
CHAT_TEMPLATE_MODES = ("auto", "none")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


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
    attention_mask: torch.Tensor  # (B, T) 1 on prompt + response region (EOS padding is response, as in LLaDA), 0 after

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclasses.dataclass(frozen=True)
class LengthReport:
    """What the length limit did to a set of pairs: never silent, always shown before training."""

    total: int  # pairs read
    overlong: int  # pairs longer than max_length (prompt + response + EOS)
    max_length: int
    policy: str  # drop or truncate
    longest: int  # tokens of the longest pair, before any truncation
    truncated: int = 0  # overlong pairs kept with a shortened response
    dropped: int = 0  # overlong pairs left out (all of them under `drop`; those whose prompt alone is too long else)


# -- sources → records ----------------------------------------------------------------------------------------------
def read_records(source: str, split: str = "train") -> list[dict[str, Any]]:
    """The records of `source` (see the module docstring); `split` picks the split of built-in tasks and datasets."""
    if source.startswith(BUILTIN_PREFIX):
        records = task_records(source[len(BUILTIN_PREFIX) :], split)
    elif Path(source).is_file() and Path(source).suffix == ".tsv":
        records = read_classification_tsv(Path(source))
    elif Path(source).is_file():
        records = read_json_records(Path(source))
    elif Path(source).is_dir():
        records = _read_dataset(source, split, local=True)
    elif _HUB_NAME.fullmatch(source) and not source.endswith((".json", ".jsonl")):
        records = _read_dataset(source, split, local=False)
    else:
        raise DllmPeftError(
            f"data file {source!r} does not exist; give a .jsonl/.json file, a dataset directory or builtin:<task>"
        )
    if not records:
        raise DllmPeftError(f"data source {source!r} holds no examples; point --data at a non-empty file")
    return records


def has_split(source: str, split: str) -> bool:
    """Whether `source` brings its own `split` (built-in tasks and local datasets with that split do)."""
    if source.startswith(BUILTIN_PREFIX):
        return True
    if not Path(source).is_dir():
        return False
    return split in _dataset_splits(_load_dataset(source, local=True))


def read_utf8(path: Path) -> str:
    """The text of `path`; a file that is not UTF-8 (Latin-1, UTF-16, binary) is one sentence naming the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DllmPeftError(
            f"{path}:{line}: byte 0x{data[error.start]:02x} is not UTF-8 text; save the file as UTF-8"
        ) from None


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """The objects of a `.json` array or of a JSON-lines file; a malformed line or item is one sentence naming it."""
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith(("[", "{")):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DllmPeftError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(records, list):
            raise DllmPeftError(f"{path} holds a JSON {type(records).__name__}; expected an array of objects")
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DllmPeftError(f"{path}: item {number} is a {type(record).__name__}, expected a JSON object")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DllmPeftError(f"{path}:{number}: not a valid JSON line ({error.msg})") from None
        if not isinstance(record, dict):
            raise DllmPeftError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _load_dataset(source: str, local: bool):
    import datasets  # imported here: it is slow to import and only dataset sources need it
    from huggingface_hub.utils import logging as hub_logging

    # The core never prints: mute datasets' progress bars and the hub client's retry warnings while loading.
    bars, verbosity = datasets.is_progress_bar_enabled(), hub_logging.get_verbosity()
    datasets.disable_progress_bars()
    hub_logging.set_verbosity_error()
    try:
        saved = (Path(source) / "dataset_dict.json").exists() or (Path(source) / "state.json").exists()
        if local and saved:
            return datasets.load_from_disk(source)
        return datasets.load_dataset(source)
    except Exception as error:  # datasets raises many types (connection, not found, bad builder)
        where = "the local directory" if local else "the Hugging Face hub (is this machine online?)"
        raise DllmPeftError(
            f"could not load dataset {source!r} from {where}: {str(error).splitlines()[0][:160]}; "
            "pass a .jsonl/.json file or a local dataset directory instead"
        ) from None
    finally:
        hub_logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _dataset_splits(dataset) -> dict[str, Any]:
    return dict(dataset) if hasattr(dataset, "keys") else {"train": dataset}


def _read_dataset(source: str, split: str, local: bool) -> list[dict[str, Any]]:
    splits = _dataset_splits(_load_dataset(source, local))
    if split not in splits and not (split == "train" and len(splits) == 1):
        raise DllmPeftError(
            f"dataset {source!r} has no {split!r} split (it has: {', '.join(splits)}); "
            f"save the split you want on its own with `dataset[name].save_to_disk(path)`"
        )
    chosen = splits.get(split) or next(iter(splits.values()))
    return chosen.to_list()


# -- records → (prompt, response) pairs ------------------------------------------------------------------------------
def prompt_response_pairs(
    records: list[dict[str, Any]], prompt_field: str = "prompt", response_field: str = "response", source: str = "data"
) -> list[tuple[str, str]]:
    """(prompt, response) text pairs; the LLM-Adapters layout is used when the named fields are absent."""
    first = records[0]
    if prompt_field in first and response_field in first:
        fields = (prompt_field, response_field)
    elif "instruction" in first and "output" in first:
        fields = ("instruction", "output")
    else:
        raise DllmPeftError(
            f"the records have no {prompt_field!r}/{response_field!r} fields (present: {', '.join(sorted(first))}); "
            "name them with --prompt-field / --response-field"
        )
    pairs = []
    for number, record in enumerate(records, start=1):
        missing = [name for name in fields if record.get(name) is None]
        if missing:
            raise DllmPeftError(
                f"record {number} of {source} has no {missing[0]!r} value (present: {', '.join(sorted(record))}); "
                "fix or remove that record"
            )
        for name in fields:  # a number reads as its digits; str() of a list, object or bool would train on a repr
            value = record[name]
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise DllmPeftError(
                    f"record {number} of {source}: {name!r} is not a string ({type(record[name]).__name__} "
                    f"{str(record[name])[:40]}); write it as text"
                )
        if fields == ("instruction", "output"):
            pairs.append((_llm_adapters_prompt(record), str(record["output"])))
        else:
            pairs.append((str(record[prompt_field]), str(record[response_field])))
    return pairs


def _llm_adapters_prompt(record: dict[str, Any]) -> str:
    extra = str(record.get("input") or "").strip()
    return str(record["instruction"]) + (f"\n{extra}" if extra else "")


def format_prompt(tokenizer: Any, prompt: str, chat_template: str = "auto") -> str:
    """The prompt as the model sees it: through the tokenizer's chat template (`auto`, when it has one) or as is."""
    if chat_template not in CHAT_TEMPLATE_MODES:
        raise DllmPeftError(f"--chat-template must be auto or none, got {chat_template!r}")
    if chat_template == "none" or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# -- pairs → examples ------------------------------------------------------------------------------------------------
def tokenize_pairs(
    pairs: list[tuple[str, str]],
    backbone: Backbone,
    max_length: int,
    overlong: str = "drop",
    chat_template: str = "none",
) -> tuple[list[Example], LengthReport]:
    """Tokenise and apply the overlong policy (`drop` or `truncate` the response), reporting what it touched."""
    if overlong not in OVERLONG_POLICIES:
        raise DllmPeftError(f"--overlong must be drop or truncate, got {overlong!r}")
    examples: list[Example] = []
    overlong_count = truncated = longest = 0
    for prompt, response in pairs:
        prompt_ids = tuple(backbone.encode(format_prompt(backbone.tokenizer, prompt, chat_template)))
        response_ids = tuple(backbone.encode(response)) + (backbone.eos_id,)
        length = len(prompt_ids) + len(response_ids)
        longest = max(longest, length)
        if length > max_length:
            overlong_count += 1
            room = max_length - len(prompt_ids)  # response tokens that still fit, EOS included
            if overlong == "drop" or room < 1:
                continue
            response_ids = response_ids[: room - 1] + (backbone.eos_id,)
            truncated += 1
        examples.append(Example(prompt_ids, response_ids))
    dropped = len(pairs) - len(examples)
    report = LengthReport(len(pairs), overlong_count, max_length, overlong, longest, truncated, dropped)
    if not examples:
        fix = "raise it or use --overlong truncate" if overlong == "drop" else "raise it (the prompts alone are longer)"
        raise DllmPeftError(f"all {len(pairs)} examples exceed --max-length {max_length} (longest {longest}); {fix}")
    return examples, report


def hold_out(examples: list[Example], count: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): `count` examples chosen at random (fixed by `seed`), at most a tenth of the data."""
    count = min(count, len(examples) // 10)
    if count < 1:
        return examples, []
    chosen = set(random.Random(seed).sample(range(len(examples)), count))
    train = [example for index, example in enumerate(examples) if index not in chosen]
    return train, [examples[index] for index in sorted(chosen)]


def fingerprint(examples: list[Example]) -> str:
    """A short hash of the tokenised examples, so a resumed run can tell that its data did not change."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt_ids, example.response_ids]).encode())
    return digest.hexdigest()[:16]


# -- examples → batches ----------------------------------------------------------------------------------------------
class ExampleOrder:
    """The training stream: epoch after epoch, each a permutation of the examples drawn from (seed, epoch).

    Position i of the stream is a pure function of (seed, i), so a run resumed at example i, or split across any
    number of processes, reads exactly the examples an uninterrupted single-process run would.
    """

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed
        self._epoch, self._permutation = -1, list(range(count))

    def indices(self, start: int, size: int) -> list[int]:
        """Example indices at stream positions start … start + size − 1."""
        return [self._at(position) for position in range(start, start + size)]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.count)
        if epoch != self._epoch:
            self._permutation = list(range(self.count))
            random.Random(derived_seed(self.seed, "order", epoch)).shuffle(self._permutation)
            self._epoch = epoch
        return self._permutation[offset]


def derived_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for one purpose and one place in the run (e.g. the masking of the micro-batch at example i)."""
    text = ":".join(str(part) for part in (seed, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def response_regions(
    examples: list[Example], pad_to: int | None = None, canvas: int | None = None, max_length: int | None = None
) -> list[int]:
    """The length L of each example's response region in a batch of `examples` (EOS padding included).

    Args:
        pad_to: pad the batch to this many tokens (at least the longest example); None: to the longest example.
        canvas: pad each response, on its own, to a multiple of this many tokens, but not past `max_length`
            (positions after it, up to the batch's length, are padding outside the sequence: attention mask 0).
    """
    if canvas is not None:
        regions = []
        for example in examples:
            room = (max_length or 1 << 62) - len(example.prompt_ids)  # ≥ the response: overlong pairs were handled
            regions.append(max(len(example.response_ids), min(-(-len(example.response_ids) // canvas) * canvas, room)))
        return regions
    length = max(max(len(example) for example in examples), pad_to or 0)
    return [length - len(example.prompt_ids) for example in examples]


def collate(
    examples: list[Example],
    eos_id: int,
    pad_to: int | None = None,
    canvas: int | None = None,
    max_length: int | None = None,
) -> Batch:
    """EOS-pad the responses, the padding counted as response (LLaDA SFT); `response_regions` says how far."""
    regions = response_regions(examples, pad_to, canvas, max_length)
    length = max(len(example.prompt_ids) + region for example, region in zip(examples, regions))
    input_ids = torch.full((len(examples), length), eos_id, dtype=torch.long)
    response_mask = torch.zeros((len(examples), length), dtype=torch.bool)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (example, region) in enumerate(zip(examples, regions)):
        tokens = example.prompt_ids + example.response_ids
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        response_mask[row, len(example.prompt_ids) : len(example.prompt_ids) + region] = True
        attention_mask[row, : len(example.prompt_ids) + region] = 1
    return Batch(input_ids, response_mask, attention_mask)
