"""Functions the task YAMLs of this folder call (`!function utils.<name>`; lm-eval imports this file by its path).

They stay thin: documents come from `dllm_peft.evaluation.documents`, scoring from `dllm_peft.evaluation.answers`, and
generated code runs in `dllm_peft.evaluation.sandbox` — never in the evaluating process.
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from dllm_peft.evaluation import sandbox
from dllm_peft.evaluation import answers
from dllm_peft.evaluation.catalogue import get_task
from dllm_peft.evaluation.documents import load_documents


def load(
    dllm_peft_task: str, data_dir: str | None = None, fewshot: bool = True, **_metadata: Any
) -> dict[str, datasets.Dataset]:
    """The splits of a task (lm-eval's `custom_dataset`; `data_dir` and `fewshot` arrive as task metadata)."""
    splits = load_documents(dllm_peft_task, data_dir, fewshot)
    return {
        split: datasets.Dataset.from_list([{**doc, "task": dllm_peft_task} for doc in docs])
        for split, docs in splits.items()
    }


def score_response(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """acc (or exact_match) of one generated response."""
    spec = get_task(doc["task"])
    return {spec.metric: float(answers.is_correct(doc, results[0], spec.answer_kind, spec.labels))}


def execute_code(responses: list[list[str]], docs: list[dict[str, Any]]) -> list[bool]:
    """A filter: run each problem's (first) generated program in the sandbox, in parallel → passed or not."""
    programs = [answers.code_program(doc, candidates[0]) for candidates, doc in zip(responses, docs)]
    outcomes = sandbox.run_programs(programs, workers=min(4, os.cpu_count() or 1))
    return [outcome.passed for outcome in outcomes]


def score_code(doc: dict[str, Any], results: list[bool]) -> dict[str, float]:
    """pass@1 from the one sample per problem."""
    return {"pass@1": float(results[0])}
