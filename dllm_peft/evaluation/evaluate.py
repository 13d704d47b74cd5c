"""`evaluate(config, on_progress)`: score a model, and with an adapter also its base, on benchmark tasks.

The engine is lm-eval's: our YAML tasks (`evaluation/tasks`, plus lm-eval's own multiple-choice tasks when the data come
from the hub) are loaded by a `TaskManager` and run by `lm_eval.evaluator.evaluate` on a `DllmPeftLM`. lm-eval's
`simple_evaluate` is not used: it would reload the model, query git and print; here one backbone serves the base run
and, after `load_adapter`, the adapter run, with the same seed. Nothing is printed: lm-eval's logging is held at
ERROR and its per-task progress bars are switched off while it runs; progress reaches `on_progress` instead, and
notices (a generation capped to fit the model's context) reach `on_notice`.

Under `accelerate launch`/`torchrun` every process runs `evaluate`: lm-eval splits the documents across processes and
gathers the scores on rank 0, which alone returns the results (and writes the files); the others return no runs.
With `log_samples`, every document's record (`sample_record`) is written, per run and task, as one JSON line beside
the results file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..adapters.files import atomic_write_bytes, load_adapter, read_adapter
from ..config import DEFAULT_MODEL, EvalConfig
from ..errors import DllmPeftError
from ..models import load_backbone
from ..outputs import check_file_outputs, storage_errors
from .answers import extract_answer
from .catalogue import (
    TASKS_DIR,
    TaskSpec,
    expand_tasks,
    get_task,
    lm_eval_task,
    stock_task_paths,
)
from .documents import check_data, source_of

MARKDOWN_MARKER = "<!-- written by dllm-peft eval -->"  # lets a later --output replace this table, and no other
BOOTSTRAP_ITERS = 1000  # stderr of mean metrics is closed-form; this only matters for other aggregations


@dataclasses.dataclass(frozen=True)
class EvalProgress:
    run: str  # base | adapter
    kind: str  # lm-eval request type: loglikelihood, generate_until, ...
    done: int
    total: int


@dataclasses.dataclass(frozen=True)
class TaskScore:
    task: str
    lm_eval_task: str
    metric: str  # the headline metric
    value: float
    stderr: float | None
    documents: int
    metrics: dict[str, float]  # every metric lm-eval reported, e.g. {"acc": …, "acc_norm": …}


@dataclasses.dataclass(frozen=True)
class EvalResults:
    runs: dict[str, dict[str, TaskScore]]  # "base" and/or "adapter" → task → score
    model: str
    adapter: str | None
    settings: dict[str, Any]
    sources: dict[str, str]  # task → where its documents came from
    versions: dict[str, str]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = dataclasses.field(default_factory=dict)  # run → task → rows

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "adapter": self.adapter,
            "results": {run: {task: dataclasses.asdict(score) for task, score in scores.items()}
                        for run, scores in self.runs.items()},
            "settings": self.settings,
            "data": self.sources,
            "versions": self.versions,
        }

    def markdown(self) -> str:
        """The results as a Markdown table: one row per task, one column per run (± standard error)."""
        runs = list(self.runs)
        header = ["task", "metric", *runs] + (["Δ"] if len(runs) == 2 else [])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for task in next(iter(self.runs.values())):
            scores = [self.runs[run][task] for run in runs]
            cells = [task, scores[0].metric, *(_percent(score) for score in scores)]
            if len(scores) == 2:
                cells.append(f"{100 * (scores[1].value - scores[0].value):+.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + MARKDOWN_MARKER + "\n"


def _percent(score: TaskScore) -> str:
    spread = f" ± {100 * score.stderr:.1f}" if score.stderr is not None else ""
    return f"{100 * score.value:.1f}{spread}"


def evaluate(
    config: EvalConfig,
    on_progress: Callable[[EvalProgress], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> EvalResults:
    """Evaluate `config.model` (and `config.adapter`, with its base when `compare_base`) on `config.tasks`."""
    from .lm import (  # imports lm-eval: only when evaluating
        DllmPeftLM,
        join_process_group,
    )

    if config.log_samples and not config.output:
        raise DllmPeftError("--log-samples writes the samples beside the results file; pass --output too")

    if config.output:  # before any work: a result that cannot be written is refused now, not after the run
        output = Path(config.output)
        check_file_outputs(output, [output.with_suffix(".md")], "--output", MARKDOWN_MARKER)
    specs = expand_tasks(config.tasks)
    _check_code_execution(specs, config)
    for spec in specs:  # missing files fail now, not after the model has loaded
        if not _uses_stock_task(spec, config):
            check_data(spec.name, config.data_dir)
    record = read_adapter(config.adapter)[0] if config.adapter else {}
    model = config.model or record.get("base_model") or DEFAULT_MODEL
    device = join_process_group(config.device)  # one process of several: its own GPU
    backbone = load_backbone(model, config.dtype, device, config.trust_remote_code)
    lm = DllmPeftLM.from_backbone(backbone, config.mc_num, config.batch_size, config.seed,
                                  mc_estimator=config.mc_estimator, mc_stop_se=config.mc_stop_se,
                                  mc_futility_se=config.mc_futility_se,
                                  **config.sampler_settings())
    lm.on_progress = lambda kind, done, total: None  # the core prints nothing: no stderr progress of its own
    if on_notice is not None:
        lm.on_notice = on_notice
    apply_chat_template = config.chat_template == "auto" and bool(getattr(backbone.tokenizer, "chat_template", None))

    runs: dict[str, dict[str, TaskScore]] = {}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    labels = ["adapter"] if config.adapter else ["base"]
    if config.adapter and config.compare_base:
        labels.insert(0, "base")  # the same backbone, before the adapter is loaded into it
    for label in labels:
        if label == "adapter":
            load_adapter(backbone, config.adapter)
            backbone.model.eval()  # the injected layers start in training mode (dropout on)
            lm.adapter = config.adapter
        if on_progress is not None:
            lm.on_progress = _reporter(label, on_progress)
        scores, rows = run_tasks(lm, specs, config, apply_chat_template, with_samples=True)
        if lm.rank != 0:  # lm-eval gathered this process's scores on rank 0
            continue
        runs[label], samples[label] = scores, rows

    if lm.rank != 0:
        return EvalResults({}, model, config.adapter, {}, {}, {})
    results = EvalResults(
        runs=runs,
        model=model,
        adapter=config.adapter,
        settings={**{k: v for k, v in dataclasses.asdict(config).items() if k not in ("model", "adapter")},
                  "apply_chat_template": apply_chat_template},
        sources={spec.name: _source(spec, config) for spec in specs},
        versions=_versions(),
        samples=samples if config.log_samples else {},
    )
    if config.output:
        write_results(results, Path(config.output))
    return results


def _reporter(run: str, on_progress: Callable[[EvalProgress], None] | None):
    """The model's progress callback (request type, done, total) for one run, or None."""
    if on_progress is None:
        return None
    return lambda kind, done, total: on_progress(EvalProgress(run, kind, done, total))


def run_tasks(lm, specs: list[TaskSpec], config: EvalConfig, apply_chat_template: bool = False,
              with_samples: bool = False):
    """Run the lm-eval tasks of `specs` on any lm-eval `LM` (tests pass an oracle) and collect the scores.

    Returns:
        task → score; with `with_samples`, also task → one `sample_record` per document. On a process other than
        rank 0 of a data-parallel run, empty (lm-eval gathers the scores on rank 0).
    """
    from lm_eval.evaluator import evaluate as lm_eval_evaluate
    from lm_eval.tasks import TaskManager

    names = {spec.name: lm_eval_task(spec, config.protocol, config.data_dir is not None) for spec in specs}
    stock = [name for name in names.values() if not name.startswith("dllm_peft_")]
    manager = TaskManager(
        include_path=[str(TASKS_DIR), *stock_task_paths(stock)],
        include_defaults=False,
        metadata={"data_dir": config.data_dir, "fewshot": config.num_fewshot > 0},
    )
    with _quiet_lm_eval():
        loaded = _load_tasks(manager, list(names.values()), stock)
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=config.num_fewshot)
            task.set_fewshot_seed(seed=config.seed)
        output = lm_eval_evaluate(
            lm=lm,
            task_dict=loaded,
            limit=config.limit,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=config.log_samples,
            apply_chat_template=apply_chat_template,
            confirm_run_unsafe_code=config.allow_code_execution,
        )
    if output is None:  # rank > 0
        return ({}, {}) if with_samples else {}
    scores = {spec.name: _score(spec, names[spec.name], output) for spec in specs}
    if not with_samples:
        return scores
    logged = output.get("samples", {})
    rows = {spec.name: [sample_record(spec, sample) for sample in logged.get(names[spec.name], [])] for spec in specs}
    return scores, rows


def sample_record(spec: TaskSpec, sample: dict[str, Any]) -> dict[str, Any]:
    """One document of an lm-eval sample log as a flat record: what was asked, expected, answered and scored."""
    doc = sample.get("doc", {})
    record: dict[str, Any] = {"doc_id": sample.get("doc_id"), "prompt": sample["arguments"][0][0],
                              "target": sample.get("target")}
    responses = [response[0] if isinstance(response, list) else response for response in sample.get("resps", [])]
    if sample["arguments"] and len(sample["arguments"][0]) > 1 and isinstance(sample["arguments"][0][1], str):
        # multiple choice: one log-likelihood request per option
        options = [arguments[1] for arguments in sample["arguments"]]
        scores = [float(response[0]) if isinstance(response, (list, tuple)) else float(response)
                  for response in responses]
        record["options"] = [{"option": option, "loglikelihood": score} for option, score in zip(options, scores)]
        record["extracted"] = options[max(range(len(scores)), key=scores.__getitem__)] if scores else None
    else:
        generation = responses[0] if responses else ""
        record["generation"] = generation
        task = get_task(doc["task"]) if "task" in doc else spec
        record["extracted"] = extract_answer(generation, task.answer_kind, task.labels)
        record["answer"] = doc.get("answer")
    metric = spec.metric if spec.metric in sample else next(
        (key for key in ("acc", "exact_match", "pass@1") if key in sample), None)
    record["correct"] = bool(sample[metric]) if metric is not None else None
    return record


def _load_tasks(manager, names: list[str], stock: list[str]) -> dict:
    try:
        return manager.load(names)
    except DllmPeftError:
        raise
    except Exception as error:  # lm-eval's own tasks fetch their data from the hub; offline that fails here
        if not stock:
            raise
        raise DllmPeftError(
            f"lm-eval could not load {', '.join(stock)} ({type(error).__name__}: {str(error)[:120]}); offline, pass "
            "--data-dir with the LLM-Adapters files to use their multiple-choice view"
        ) from None


def _score(spec: TaskSpec, name: str, output: dict) -> TaskScore:
    reported = output["results"][name]
    metrics = {}
    for key, value in reported.items():  # keys look like "acc,none" and "acc_stderr,none"
        metric, _, _filter = key.partition(",")
        if _filter and "_stderr" not in metric and isinstance(value, (int, float)):
            metrics[metric] = float(value)
    headline = spec.metric if spec.metric in metrics else next(iter(metrics))
    stderr = next((v for k, v in reported.items() if k.startswith(f"{headline}_stderr,")), None)
    stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
    documents = int(output.get("n-samples", {}).get(name, {}).get("effective", 0))
    return TaskScore(spec.name, name, headline, metrics[headline], stderr, documents, metrics)


def _check_code_execution(specs: list[TaskSpec], config: EvalConfig) -> None:
    code = [spec.name for spec in specs if spec.suite == "code"]
    if code and not config.allow_code_execution:
        verb = "runs" if len(code) == 1 else "run"
        raise DllmPeftError(
            f"{' and '.join(code)} {verb} the generated code; pass --allow-code-execution to run it in the sandbox"
        )


def _uses_stock_task(spec: TaskSpec, config: EvalConfig) -> bool:
    """Multiple choice without --data-dir: lm-eval's own task and its hub data."""
    return spec.suite == "commonsense" and config.protocol == "mc" and config.data_dir is None


def _source(spec: TaskSpec, config: EvalConfig) -> str:
    if _uses_stock_task(spec, config):
        return f"lm-eval task {spec.stock_task} (hub)"
    return source_of(spec.name, config.data_dir)


def _versions() -> dict[str, str]:
    import importlib.metadata

    packages = ("lm_eval", "torch", "transformers", "datasets")
    return {"dllm_peft": __version__, **{name: importlib.metadata.version(name) for name in packages}}


def write_results(results: EvalResults, path: Path) -> None:
    """The results JSON at `path` and the Markdown table beside it, both written atomically; logged samples go to
    `<path stem>.samples/<run>-<task>.jsonl`, one JSON line per document."""
    advice = "free space or choose another --output"
    with storage_errors(f"writing {path}", advice):
        atomic_write_bytes(path, (json.dumps(results.to_json(), indent=2) + "\n").encode())
        atomic_write_bytes(path.with_suffix(".md"), results.markdown().encode())
        for run, tasks in results.samples.items():
            for task, rows in tasks.items():
                lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
                atomic_write_bytes(samples_path(path, run, task), lines.encode())


def samples_path(results_path: Path, run: str, task: str) -> Path:
    """Where `write_results` puts the per-document records of one run and task."""
    return results_path.with_name(f"{results_path.stem}.samples") / f"{run}-{task}.jsonl"


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs at INFO/WARNING and draws a tqdm bar per task; the core prints nothing, so hold both back."""
    import lm_eval.api.task as task_module

    logger = logging.getLogger("lm_eval")
    level, progress_bar = logger.level, task_module.tqdm
    logger.setLevel(logging.ERROR)
    task_module.tqdm = functools.partial(progress_bar, disable=True)
    try:
        yield
    finally:
        logger.setLevel(level)
        task_module.tqdm = progress_bar
