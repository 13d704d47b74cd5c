"""Every task of the three suites is wired end to end through lm-eval: an oracle scores 100 %, a constant model
scores at chance, and a folder in the LLM-Adapters layout evaluates any task without code changes.

The oracle and the constant model are lm-eval `LM`s that bypass the sampler, so these tests check the task files,
the data loaders, answer extraction, the metrics and the code sandbox — not a model. Over the offline data in
`../shared/data` they read the first 500 documents of each task (HumanEval: 20 problems); DLLM_PEFT_FULL_EVAL=1 runs
every document (about a minute).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from dllm_peft.config import EvalConfig
from dllm_peft.errors import DllmPeftError
from dllm_peft.evaluation.catalogue import ALIASES, TASKS, TASKS_DIR, expand_tasks
from dllm_peft.evaluation.documents import load_documents
from dllm_peft.evaluation.evaluate import run_tasks

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the offline data {SHARED} is absent")
LOCAL_LLM_ADAPTERS = ("boolq", "piqa", "arc_easy", "arc_challenge", "openbookqa", "gsm8k", "aqua")
FULL = os.environ.get("DLLM_PEFT_FULL_EVAL") == "1"
LIMIT, CODE_LIMIT = (None, None) if FULL else (500, 20)


class OracleLM(LM):
    """Answers every prompt with the task's reference response and gives the gold option the highest likelihood."""

    def __init__(self, tasks: list[str], data_dir: str | None):
        super().__init__()
        self.responses, self.gold = {}, set()
        for task in tasks:
            for doc in load_documents(task, data_dir, fewshot=False)["test"]:
                self.responses[doc["prompt"]] = doc["target"]
                if "choices" in doc:
                    self.gold.add((doc["context"], " " + doc["choices"][doc["label"]]))

    def generate_until(self, requests):
        return [self.responses[request.args[0]] for request in requests]

    def loglikelihood(self, requests):
        return [(0.0 if tuple(request.args) in self.gold else -1.0, False) for request in requests]

    def loglikelihood_rolling(self, requests):
        return [0.0] * len(requests)


class ConstantLM(LM):
    """The same log-likelihood for every option, and an empty answer to every prompt."""

    def generate_until(self, requests):
        return [""] * len(requests)

    def loglikelihood(self, requests):
        return [(-1.0, False)] * len(requests)

    def loglikelihood_rolling(self, requests):
        return [-1.0] * len(requests)


def scores(lm, tasks: str, **settings) -> dict[str, float]:
    """The headline metric of each task, as `run_tasks` reports it."""
    config = EvalConfig(tasks=tasks, **settings)
    return {name: score.value for name, score in run_tasks(lm, expand_tasks(tasks), config).items()}


# -- Must show 1: the offline data ----------------------------------------------------------------------------------
@needs_shared
def test_oracle_scores_100_percent_on_every_local_llm_adapters_task_and_openai_gsm8k():
    data = str(SHARED)
    oracle = OracleLM(list(LOCAL_LLM_ADAPTERS), data)
    measured = scores(oracle, ",".join(LOCAL_LLM_ADAPTERS), data_dir=data, limit=LIMIT)
    assert measured == {task: 1.0 for task in LOCAL_LLM_ADAPTERS}
    jsonl = str(SHARED / "gsm8k")  # OpenAI's test.jsonl ("#### 72" answers) rather than the LLM-Adapters file
    assert scores(OracleLM(["gsm8k"], jsonl), "gsm8k", data_dir=jsonl, limit=LIMIT) == {"gsm8k": 1.0}


@needs_shared
def test_oracle_passes_humaneval_through_the_sandbox():
    data = str(SHARED)
    result = scores(OracleLM(["humaneval"], data), "humaneval", data_dir=data, allow_code_execution=True,
                    limit=CODE_LIMIT)
    assert result == {"humaneval": 1.0}


@needs_shared
def test_a_constant_model_scores_at_chance_on_the_multiple_choice_view():
    data = str(SHARED)
    tasks = ("boolq", "piqa", "arc_easy", "arc_challenge", "openbookqa")
    measured = scores(ConstantLM(), ",".join(tasks), data_dir=data, protocol="mc", limit=LIMIT)
    for task in tasks:
        docs = load_documents(task, data, fewshot=False)["test"][:LIMIT]
        first_option_share = sum(doc["label"] == 0 for doc in docs) / len(docs)
        assert measured[task] == pytest.approx(first_option_share)  # ties go to the first option: chance, exactly
        chance = 1 / len(docs[0]["choices"])
        if task != "boolq":  # boolq is 62 % "true": a constant guess scores the majority share, not 1/2
            assert abs(measured[task] - chance) < 3 * (chance * (1 - chance) / len(docs)) ** 0.5


# -- Must show 3: any folder in the LLM-Adapters layout -------------------------------------------------------------
def _instruction(spec, question: str, options: list[str]) -> str:
    if spec.name == "boolq":
        lead = "Please answer the following question with true or false, question:"
        return f"{lead} {question}\n\nAnswer format: true/false"
    word = spec.labels[0].rstrip("0123456789")
    written = " ".join(f"{word.capitalize()}{i}: {text}" for i, text in enumerate(options, start=1))
    return f"Please choose the correct answer to the question: {question}\n\n{written}\n\nAnswer format: " + "/".join(
        spec.labels[: len(options)]
    )


def write_llm_adapters_folder(root: Path) -> None:
    """Three records per task, in the LLM-Adapters layout and answer formats (SOURCES.md), plus the code files."""
    for spec in TASKS.values():
        if spec.folder is None:
            continue
        rows = []
        for i in range(3):
            if spec.suite == "commonsense":
                options = [f"option text {i}-{j}" for j in range(len(spec.labels) if spec.name != "boolq" else 0)][:4]
                answer = spec.labels[i % max(2, len(options))]
                rows.append({"instruction": _instruction(spec, f"question {i} of {spec.name}?", options),
                             "input": "", "output": f"the correct answer is {answer}", "answer": answer})
            elif spec.answer_kind == "letter":
                rows.append({"instruction": f"What is {i} + 1? Answer Choices: (A) {i + 1} (B) {i + 2}", "input": "",
                             "output": "", "answer": "A"})
            else:
                rows.append({"instruction": f"Tom has {i} apples and buys 2.5 more. How many?", "input": "",
                             "output": "", "answer": str(i + 2.5)})
        folder = root / "dataset" / spec.folder
        folder.mkdir(parents=True)
        (folder / "test.json").write_text(json.dumps(rows))
    problems = [{"task_id": "Fixture/0", "prompt": "def double(x):\n    \"\"\"Twice x.\"\"\"\n",
                 "canonical_solution": "    return 2 * x\n", "entry_point": "double",
                 "test": "def check(candidate):\n    assert candidate(3) == 6\n"}]
    with gzip.open(root / "dataset" / "HumanEval.jsonl.gz", "wt") as stream:
        stream.write("".join(json.dumps(problem) + "\n" for problem in problems))
    mbpp = [{"task_id": task_id, "text": f"Write a function that returns {task_id}.",
             "code": f"def f():\n    return {task_id}", "test_list": [f"assert f() == {task_id}"],
             "test_setup_code": "", "challenge_test_list": []}
            for task_id in (1, 11, 12, 600)]  # prompt split, test split (11-510), validation
    (root / "dataset" / "mbpp.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mbpp))


@pytest.mark.parametrize("layout", ["repository-root", "dataset-folder"])
def test_a_folder_in_the_llm_adapters_layout_evaluates_every_task_of_the_three_suites(tmp_path, layout):
    write_llm_adapters_folder(tmp_path)
    data = str(tmp_path if layout == "repository-root" else tmp_path / "dataset")
    suites = "commonsense,math,code"
    every = [spec.name for spec in expand_tasks(suites)]
    assert len(every) == 17
    generative = scores(OracleLM(every, data), suites, data_dir=data, allow_code_execution=True)
    assert generative == {task: 1.0 for task in every}
    multiple_choice = scores(OracleLM(every, data), "commonsense", data_dir=data, protocol="mc")
    assert multiple_choice == {task: 1.0 for task in ALIASES["commonsense"]}
    assert len(load_documents("mbpp", data)["test"]) == 2  # task ids 11 and 12: the official test split


def test_every_task_has_its_yaml_files():
    for spec in TASKS.values():
        assert (TASKS_DIR / f"dllm_peft_{spec.name}.yaml").is_file()
        assert (TASKS_DIR / f"dllm_peft_{spec.name}_mc.yaml").is_file() == (spec.suite in ("commonsense", "classification"))


def test_suites_expand_to_the_paper_s_tasks_once_each():
    assert [spec.name for spec in expand_tasks("arc,arc_easy")] == ["arc_easy", "arc_challenge"]
    assert len(expand_tasks("commonsense")) == 8 and len(expand_tasks("math")) == 7
    assert [spec.name for spec in expand_tasks("code")] == ["humaneval", "mbpp"]
    with pytest.raises(DllmPeftError, match=r"unknown task 'hellaswa' \(did you mean 'hellaswag'\?\); choose from"):
        expand_tasks("hellaswa")


def test_a_missing_file_is_a_sentence_naming_the_expected_path(tmp_path):
    with pytest.raises(DllmPeftError, match=f"task svamp needs {tmp_path}/dataset/SVAMP/test.json"):
        load_documents("svamp", str(tmp_path))
    with pytest.raises(DllmPeftError, match="pass --data-dir with the LLM-Adapters repository"):
        load_documents("winogrande", None)
    with pytest.raises(DllmPeftError, match=f"task mbpp needs {tmp_path}/mbpp.jsonl"):
        load_documents("mbpp", str(tmp_path))


def test_without_data_dir_an_unreachable_hub_is_one_sentence(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DllmPeftError, match="could not load openai/gsm8k from the Hugging Face hub"):
        load_documents("gsm8k", None)


def test_hellaswag_and_boolq_read_their_hugging_face_schemas(tmp_path):
    import gzip

    rows = {"hellaswag": {"activity_label": "Cooking", "ctx": "She cracks an egg. she", "endings": ["a", "b", "c", "d"],
                          "label": "2"},
            "boolq": {"question": "is water wet", "passage": "Water is a liquid.", "answer": True}}
    for task, row in rows.items():
        (tmp_path / task).mkdir()
        with gzip.open(tmp_path / task / "validation.jsonl.gz", "wt", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")
    hellaswag = load_documents("hellaswag", str(tmp_path))["test"][0]
    assert hellaswag["answer"] == "ending3" and hellaswag["label"] == 2 and hellaswag["choices"] == ["a", "b", "c", "d"]
    assert "Ending3: c" in hellaswag["prompt"] and hellaswag["prompt"].endswith("ending1/ending2/ending3/ending4")
    boolq = load_documents("boolq", str(tmp_path))["test"][0]
    assert boolq["answer"] == "true" and "Passage: Water is a liquid." in boolq["prompt"] and boolq["label"] == 0
