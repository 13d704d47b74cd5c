"""The task catalogue: every task `dllm-peft eval` knows, the suite aliases, and how a name becomes lm-eval tasks.

Suites follow the NaRA paper (which follows LLM-Adapters): eight commonsense tasks, seven math word-problem sets and
two code sets, plus the built-in tasks of `data/tasks.py` and the classification tasks of the LoRA-Diffusion paper
(SST-2, AG News: `data/classification.py`; multiple choice over the label words, or generative with the first label
word of the response as the answer). Each task maps to one YAML task shipped in
`evaluation/tasks/` (named `dllm_peft_<task>`, and `dllm_peft_<task>_mc` for the multiple-choice protocol of a
commonsense task over the same file). Without `--data-dir`, the multiple-choice protocol uses lm-eval's own task and
its hub dataset instead (`arc_easy`, `boolq`, `social_iqa`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from ..data.classification import CLASSIFICATION_TASKS
from ..data.tasks import TASKS as BUILTIN_TASKS
from ..errors import DllmPeftError

TASKS_DIR = Path(__file__).parent / "tasks"
TASK_PREFIX = "dllm_peft_"
PROTOCOLS = ("generative", "mc")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    suite: str  # commonsense | math | code | classification | builtin
    folder: str | None = None  # LLM-Adapters folder under dataset/
    labels: tuple[str, ...] = ()  # commonsense: the answer labels of the test file, in option order
    stock_task: str | None = None  # commonsense: lm-eval's own multiple-choice task (hub data)
    answer_kind: str = "exact"  # how a response is scored: label | number | letter | code | exact
    max_gen_toks: int = 32  # generation length a task needs when --gen-length is not given

    @property
    def metric(self) -> str:
        """The metric the summary table shows."""
        return {"code": "pass@1", "exact": "exact_match"}.get(self.answer_kind, "acc")


def _commonsense(name: str, folder: str, labels: tuple[str, ...], stock_task: str) -> TaskSpec:
    return TaskSpec(name, "commonsense", folder, labels, stock_task, "label", 32)


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _commonsense("boolq", "boolq", ("true", "false"), "boolq"),
        _commonsense("piqa", "piqa", _numbered("solution", 2), "piqa"),
        _commonsense("siqa", "social_i_qa", _numbered("answer", 3), "social_iqa"),
        _commonsense("hellaswag", "hellaswag", _numbered("ending", 4), "hellaswag"),
        _commonsense("winogrande", "winogrande", _numbered("option", 2), "winogrande"),
        _commonsense("arc_easy", "ARC-Easy", _numbered("answer", 5), "arc_easy"),
        _commonsense("arc_challenge", "ARC-Challenge", _numbered("answer", 5), "arc_challenge"),
        _commonsense("openbookqa", "openbookqa", _numbered("answer", 5), "openbookqa"),
        TaskSpec("gsm8k", "math", "gsm8k", answer_kind="number", max_gen_toks=256),
        TaskSpec("svamp", "math", "SVAMP", answer_kind="number", max_gen_toks=256),
        TaskSpec("aqua", "math", "AQuA", answer_kind="letter", max_gen_toks=256),
        TaskSpec("mawps", "math", "mawps", answer_kind="number", max_gen_toks=256),
        TaskSpec("addsub", "math", "AddSub", answer_kind="number", max_gen_toks=256),
        TaskSpec("multiarith", "math", "MultiArith", answer_kind="number", max_gen_toks=256),
        TaskSpec("singleeq", "math", "SingleEq", answer_kind="number", max_gen_toks=256),
        TaskSpec("humaneval", "code", answer_kind="code", max_gen_toks=512),
        TaskSpec("mbpp", "code", answer_kind="code", max_gen_toks=512),
        *(TaskSpec(name, "classification", labels=task.labels, answer_kind="label", max_gen_toks=8)
          for name, task in CLASSIFICATION_TASKS.items()),
        *(TaskSpec(name, "builtin", answer_kind="exact", max_gen_toks=32) for name in BUILTIN_TASKS),
    )
}

ALIASES: dict[str, tuple[str, ...]] = {
    "arc": ("arc_easy", "arc_challenge"),
    "commonsense": ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"),
    "math": ("gsm8k", "svamp", "aqua", "mawps", "addsub", "multiarith", "singleeq"),
    "code": ("humaneval", "mbpp"),
    "classification": tuple(CLASSIFICATION_TASKS),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        names = [*ALIASES, *TASKS]
        close = difflib.get_close_matches(name, names, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise DllmPeftError(f"unknown task {name!r}{guess}; choose from: {', '.join(names)}")
    return TASKS[name]


def expand_tasks(names: str) -> list[TaskSpec]:
    """The tasks of a comma-separated list of task names and suite aliases, each once, in the order given."""
    expanded: list[str] = []
    for name in (part.strip() for part in names.split(",")):
        if not name:
            continue
        for task in ALIASES.get(name, (name,)):
            if task not in expanded:
                expanded.append(get_task(task).name)
    if not expanded:
        raise DllmPeftError(f"--tasks {names!r} names no task; give a list such as commonsense,gsm8k")
    return [TASKS[name] for name in expanded]


def lm_eval_task(spec: TaskSpec, protocol: str, local_data: bool) -> str:
    """The lm-eval task that evaluates `spec` under `protocol`; `local_data`: a --data-dir was given."""
    if protocol not in PROTOCOLS:
        raise DllmPeftError(f"unknown --protocol {protocol!r}; choose generative or mc")
    if protocol == "mc" and spec.suite == "classification":
        return f"{TASK_PREFIX}{spec.name}_mc"
    if protocol == "mc" and spec.suite == "commonsense":
        return f"{TASK_PREFIX}{spec.name}_mc" if local_data else spec.stock_task
    return f"{TASK_PREFIX}{spec.name}"


def stock_task_paths(task_names: list[str]) -> list[str]:
    """The folders of lm-eval's own YAMLs that define `task_names`, so only they are indexed (all: ~20 s)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    folders = {"arc_easy": "arc", "arc_challenge": "arc", "boolq": "super_glue/boolq", "social_iqa": "siqa"}
    return sorted({str(root / folders.get(name, name)) for name in task_names})
