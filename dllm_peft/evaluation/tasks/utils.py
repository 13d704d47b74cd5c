"""Functions the task YAMLs of this folder call (`!function utils.<name>`; lm-eval imports this file by its path).

They stay thin: documents come from `dllm_peft.evaluation.documents`, scoring from `dllm_peft.evaluation.answers`, and
generated code runs in `dllm_peft.evaluation.sandbox` — never in the evaluating process. Code is scored in the
sandbox's split mode: the completion runs confined, the dataset's tests run in the sandbox's supervisor and call it,
so a completion can neither see the tests nor report its own success.
"""

from __future__ import annotations

import os
import re
from typing import Any

import datasets

from dllm_peft.evaluation import answers, sandbox
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


def code_problem(doc: dict[str, Any], response: str) -> sandbox.Problem:
    """The sandbox problem that passes when the completion in `response` solves `doc`.

    The solution is what `answers.code_program` puts before the tests: HumanEval's prompt + completion (a response
    that writes the whole function follows the prompt's stub, closed with `pass`, so its own definition wins), or
    MBPP's set-up code + code. The tests are the dataset's (HumanEval's end with `check(entry_point)`); the prompt or
    set-up code also runs before them in the supervisor, so helpers the tests use (`poly`, `encode_cyclic`) are the
    dataset's own and not the completion's.
    """
    completion = answers.extract_code(response)
    prefix = doc["program_prefix"]
    entry_point = doc["entry_point"]
    defines_entry_point = re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", completion, re.MULTILINE)
    if entry_point and defines_entry_point and prefix.strip():
        prefix = prefix.rstrip() + "\n    pass\n\n"
    return sandbox.Problem(solution=f"{prefix}{completion}\n", tests=f"{doc['tests']}\n", entry_point=entry_point,
                           prelude=doc["program_prefix"])


def execute_code(responses: list[list[str]], docs: list[dict[str, Any]]) -> list[bool]:
    """A filter: run each problem's (first) generated completion in the sandbox, in parallel → passed or not."""
    problems = [code_problem(doc, candidates[0]) for candidates, doc in zip(responses, docs)]
    outcomes = sandbox.run_programs(problems, workers=min(4, os.cpu_count() or 1))
    return [outcome.passed for outcome in outcomes]


def score_code(doc: dict[str, Any], results: list[bool]) -> dict[str, float]:
    """pass@1 from the one sample per problem."""
    return {"pass@1": float(results[0])}
