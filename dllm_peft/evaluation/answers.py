"""From a generated response to a score: answer extraction and the programs that test generated code.

Extraction follows the LLM-Adapters evaluation scripts that the NaRA paper uses, with two documented departures:
- commonsense: the first answer label of the task found in the response (`answer2`, `solution1`, `true`, ...);
  matched case-insensitively (LLM-Adapters matches case-sensitively, which scores "Answer2" as wrong);
- math: the last number in the response, commas removed, correct within 0.001 of the gold value (as LLM-Adapters);
  AQuA: the last stand-alone option letter A–E (LLM-Adapters takes the first capital A–E anywhere, so the "A" of
  "Answer: (C)" would count as the answer);
- code: the first fenced code block when there is one, else the response as it is; pass@1 from one sample.
- built-in tasks: exact match of the response's first non-empty line against the answer.
"""

from __future__ import annotations

import re
from typing import Any

NUMBER = re.compile(r"-?\d+\.?\d*")
OPTION_LETTER = re.compile(r"\b([A-E])\b")
FENCED_CODE = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.DOTALL)
NUMBER_TOLERANCE = 1e-3


def extract_label(response: str, labels: tuple[str, ...]) -> str | None:
    """The first of `labels` that occurs in the response, or None."""
    pattern = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    found = re.search(pattern, response, re.IGNORECASE)
    return found.group(0).lower() if found else None


def extract_number(response: str) -> float | None:
    """The last number of the response, or None."""
    numbers = NUMBER.findall(response.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def extract_letter(response: str) -> str | None:
    """The last stand-alone option letter A–E of the response, or None."""
    letters = OPTION_LETTER.findall(response)
    return letters[-1] if letters else None


def extract_code(response: str) -> str:
    """The first fenced code block of the response, or the whole response."""
    block = FENCED_CODE.search(response)
    return block.group(1) if block else response


def extract_line(response: str) -> str:
    """The first non-empty line of the response, stripped."""
    return next((line.strip() for line in response.splitlines() if line.strip()), "")


def extract_answer(response: str, answer_kind: str, labels: tuple[str, ...] = ()) -> str | float | None:
    """What `is_correct` compares with the gold answer (for per-sample logs); code: the program's text."""
    extractors = {"label": lambda text: extract_label(text, labels), "number": extract_number,
                  "letter": extract_letter, "exact": extract_line, "code": extract_code}
    return extractors[answer_kind](response) if answer_kind in extractors else None


def is_correct(doc: dict[str, Any], response: str, answer_kind: str, labels: tuple[str, ...] = ()) -> bool:
    """Whether `response` answers `doc` correctly (every kind but code, which needs the sandbox)."""
    if answer_kind == "label":
        return extract_label(response, labels) == doc["answer"].lower()
    if answer_kind == "number":
        predicted = extract_number(response)
        return predicted is not None and abs(predicted - float(doc["answer"])) <= NUMBER_TOLERANCE
    if answer_kind == "letter":
        return extract_letter(response) == doc["answer"].strip().upper()
    if answer_kind == "exact":
        return extract_line(response) == doc["answer"]
    raise ValueError(f"answer kind {answer_kind!r} is not scored by text comparison")


def code_program(doc: dict[str, Any], response: str) -> str:
    """The Python program that passes when the completion in `response` solves `doc`.

    HumanEval: prompt + completion + the tests. A response that writes the whole function (instruction-tuned models
    often do) is placed after the prompt's stub, closed with `pass`, so its own definition wins and the prompt's
    imports and helpers stay. MBPP: set-up code + the code + the asserts.
    """
    completion = extract_code(response)
    prefix = doc["program_prefix"]
    entry_point = doc["entry_point"]
    defines_entry_point = re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", completion, re.MULTILINE)
    if entry_point and defines_entry_point and prefix.strip():
        prefix = prefix.rstrip() + "\n    pass\n\n"
    return f"{prefix}{completion}\n\n{doc['tests']}\n"
