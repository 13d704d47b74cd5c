"""Requests/s of the batched Monte-Carlo log-likelihood against the one-request-at-a-time reference (LLaDA's loop).

Both compute the same estimate (the same samples per request; the largest difference is written down) at the same
`mc_num` and at most the same number of rows per forward pass, on the default model `dllm-tiny`. Workloads are the
requests lm-eval sends for multiple-choice tasks (one request per option, the options sharing their context): the real
commonsense test files of `--data-dir` (boolq, piqa, arc_easy, arc_challenge, openbookqa; a missing one is skipped),
the arc_easy questions asked MMLU-style (options listed in the context, the letters as continuations), and
multiple-choice sets built from the built-in tasks (each prompt with its own answer and three others).

Token counts decide the result, and `dllm-tiny` reads bytes, which makes every option 3-5 times longer than LLaDA's
126k-token BPE does. LLaDA's tokenizer cannot be downloaded here, so the real tasks run twice: in bytes, and in a
byte-level BPE of up to 32k tokens trained at start-up on the text of the `--data-dir` files (`tokenizers`, GPT-2
style). For the BPE workloads each question's tokens are renumbered by first appearance into the byte ids, so the model,
its cost per token and every equality between tokens stay as they were; only the lengths change.

Besides the times, each workload records the work of both arms: forward rows and tokens (padding included), counted
in one extra untimed call. On a CPU a forward pass costs in proportion to its tokens plus a fixed cost, so the token
ratio is the speedup to expect for large passes; the measured speedup is the ratio of the medians of interleaved
repeats. The `commonsense (…)` rows add up the tasks' median times: the whole suite's requests/s.

    python benchmarks/loglikelihood/run.py            # writes benchmarks/results/loglikelihood.json
    python benchmarks/loglikelihood/run.py --quick    # a reduced run (mc_num 1 and 32, fewer requests), same schema
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dllm_peft.atomic import atomic_write_bytes
from dllm_peft.data.tasks import task_records
from dllm_peft.diffusion.likelihood import log_likelihoods, reference_log_likelihood
from dllm_peft.errors import DllmPeftError
from dllm_peft.evaluation.documents import load_documents
from dllm_peft.models import DEFAULT_MODEL_NAME, load_backbone

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "loglikelihood.json"
DATA_DIR = ROOT.parent / "shared" / "data" / "llm-adapters"
REAL_TASKS = ("boolq", "piqa", "arc_easy", "arc_challenge", "openbookqa")
BPE_VOCABULARY = 32000
BUILTIN_WORKLOADS = {"addition": "short answers", "reverse": "medium answers", "uppercase": "long answers"}
# questions per task; the BPE workloads are several times cheaper (shorter), so they get more, for a steadier figure
SETTINGS = {"full": {"mc_num": [1, 8, 32, 128], "questions": 4, "bpe_questions": 24, "repeats": 3},
            "quick": {"mc_num": [1, 32], "questions": 3, "bpe_questions": 6, "repeats": 1}}

Requests = list[tuple[list[int], list[int]]]


def real_requests(encode: Callable[[str], list[int]], task: str, data_dir: Path, questions: int) -> Requests:
    """lm-eval's multiple-choice requests for the first `questions` documents: context, then " " + each option."""
    documents = load_documents(task, str(data_dir), fewshot=False)["test"][:questions]
    return [request for doc in documents for request in question_requests(encode, doc)]


def question_requests(encode: Callable[[str], list[int]], doc: dict) -> Requests:
    return [(encode(doc["context"]), encode(" " + choice)) for choice in doc["choices"]]


def subword_encoder(data_dir: Path, byte_ids: int = 256) -> Callable[[dict], Requests]:
    """A byte-level BPE trained on the text of the `data_dir` files, as a function of a document to its requests.

    Each question's BPE tokens are renumbered into 0..`byte_ids`-1, so `dllm-tiny` can run them unchanged: equal
    tokens stay equal within a question (what lets rows be shared), and only the lengths differ from the byte
    encoding. The n-th distinct token of a question gets the n-th id of a permutation drawn from the question's own
    text: numbering by first appearance alone gave every context without repeated tokens the same ids (0, 1, 2, …),
    so different questions of equal length had one context and an estimator that groups the options of a context
    would have taken them for one question.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = []
    for path in sorted(data_dir.rglob("*.json")):
        rows = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(rows, list):
            texts += [text for row in rows if isinstance(row, dict) for text in row.values() if isinstance(text, str)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=BPE_VOCABULARY, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))

    def requests(doc: dict) -> Requests:
        numbers: dict[int, int] = {}
        bpe = question_requests(lambda text: tokenizer.encode(text).ids, doc)
        seed = int.from_bytes(hashlib.blake2b(doc["context"].encode(), digest_size=8).digest(), "little")
        ids = random.Random(seed).sample(range(byte_ids), byte_ids)  # this question's own order of the ids
        renumbered = [tuple([numbers.setdefault(token, len(numbers)) for token in tokens] for tokens in pair)
                      for pair in bpe]
        if len(numbers) > byte_ids:
            raise ValueError(f"a question uses {len(numbers)} distinct BPE tokens, more than {byte_ids}")
        return [tuple([ids[number] for number in part] for part in pair) for pair in renumbered]

    requests.vocabulary = tokenizer.get_vocab_size()
    return requests


def bpe_requests(encoder: Callable[[dict], Requests], task: str, data_dir: Path, questions: int) -> Requests:
    documents = load_documents(task, str(data_dir), fewshot=False)["test"][:questions]
    return [request for doc in documents for request in encoder(doc)]


def letter_requests(backbone, task: str, data_dir: Path, questions: int) -> Requests:
    """The same documents asked MMLU-style: the options listed in the context, the letters as the continuations."""
    documents = load_documents(task, str(data_dir), fewshot=False)["test"][:questions]
    requests = []
    for doc in documents:
        letters = "ABCDEFGH"[: len(doc["choices"])]
        listed = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, doc["choices"]))
        context = backbone.encode(doc["context"].removesuffix("\nAnswer:") + listed + "\nAnswer:")
        requests += [(context, backbone.encode(" " + letter)) for letter in letters]
    return requests


def builtin_requests(backbone, task: str, questions: int) -> Requests:
    """Each prompt of a built-in task with its own answer and the next three prompts' answers as the options."""
    records = task_records(task, "test", questions + 3)
    return [(backbone.encode(records[index]["prompt"]), backbone.encode(records[index + shift]["response"]))
            for index in range(questions) for shift in range(4)]


def workloads(
    backbone, data_dir: Path, questions: int, bpe_questions: int
) -> tuple[dict[str, Requests], list[str], dict]:
    found, skipped, suites = {}, [], {"byte": [], "BPE": []}
    available = []
    for task in REAL_TASKS:
        try:
            found[f"{task} (test file, byte tokens)"] = real_requests(backbone.encode, task, data_dir, questions)
            available.append(task)
            suites["byte"].append(f"{task} (test file, byte tokens)")
        except DllmPeftError as error:
            skipped.append(f"{task}: {error}")
    tokenizer = {}
    if available:
        started = time.perf_counter()
        encoder = subword_encoder(data_dir)
        tokenizer = {"kind": "byte-level BPE trained on the --data-dir files", "vocabulary": encoder.vocabulary,
                     "training_seconds": round(time.perf_counter() - started, 1)}
        for task in available:
            found[f"{task} (test file, BPE tokens)"] = bpe_requests(encoder, task, data_dir, bpe_questions)
            suites["BPE"].append(f"{task} (test file, BPE tokens)")
    if "arc_easy" in available:
        found["arc_easy, letter answers (MMLU-style)"] = letter_requests(backbone, "arc_easy", data_dir, questions)
    for task, label in BUILTIN_WORKLOADS.items():
        found[f"{label} (built-in {task})"] = builtin_requests(backbone, task, questions)
    return found, skipped, {"suites": {kind: names for kind, names in suites.items() if names}, "bpe": tokenizer}


def reference_arm(backbone, requests: Requests, mc_num: int, batch_size: int) -> list[float]:
    return [reference_log_likelihood(backbone, prompt, answer, mc_num, batch_size) for prompt, answer in requests]


def batched_arm(backbone, requests: Requests, mc_num: int, batch_size: int) -> list[float]:
    return log_likelihoods(backbone, requests, mc_num, batch_size)


def forward_work(backbone, arm, requests: Requests, mc_num: int, batch_size: int) -> dict[str, int]:
    """Forward passes, rows and tokens (padding included) that one call of `arm` runs, and the logit vectors it makes
    (positions the LM head scores: every one for the reference, the masked ones for the batched arm)."""
    work = {"passes": 0, "rows": 0, "tokens": 0, "logit_vectors": 0}
    logits = backbone.logits

    def counting(input_ids, *args, **kwargs):
        work["passes"] += 1
        work["rows"] += input_ids.shape[0]
        work["tokens"] += input_ids.numel()
        output = logits(input_ids, *args, **kwargs)
        work["logit_vectors"] += output.shape[0] * output.shape[1]
        return output

    backbone.logits = counting
    try:
        arm(backbone, requests, mc_num, batch_size)
    finally:
        del backbone.logits  # back to the class method
    return work


def timed(arm, backbone, requests: Requests, mc_num: int, batch_size: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    values = arm(backbone, requests, mc_num, batch_size)
    return time.perf_counter() - started, values


def measure(backbone, requests: Requests, mc_num: int, batch_size: int, repeats: int) -> dict:
    seconds = {"reference": [], "batched": []}
    values = {}
    for repeat in range(repeats):  # interleaved, alternating which arm goes first
        order = ("reference", "batched") if repeat % 2 == 0 else ("batched", "reference")
        for name in order:
            arm = reference_arm if name == "reference" else batched_arm
            elapsed, values[name] = timed(arm, backbone, requests, mc_num, batch_size)
            seconds[name].append(elapsed)
    reference_work = forward_work(backbone, reference_arm, requests, mc_num, batch_size)
    batched_work = forward_work(backbone, batched_arm, requests, mc_num, batch_size)
    reference_s, batched_s = statistics.median(seconds["reference"]), statistics.median(seconds["batched"])
    lengths = [len(answer) for _, answer in requests]
    return {
        "requests": len(requests),
        "answer_tokens": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        "mc_num": mc_num,
        "reference_requests_per_s": round(len(requests) / reference_s, 2),
        "batched_requests_per_s": round(len(requests) / batched_s, 2),
        "speedup": round(reference_s / batched_s, 2),
        "token_ratio": round(reference_work["tokens"] / batched_work["tokens"], 2),
        "median_seconds": {"reference": reference_s, "batched": batched_s},
        "reference_work": reference_work,
        "batched_work": batched_work,
        "seconds": {name: [round(value, 3) for value in times] for name, times in seconds.items()},
        "max_abs_difference": max(abs(x - y) for x, y in zip(values["reference"], values["batched"])),
    }


def suite_rows(rows: list[dict], suites: dict[str, list[str]], mc_nums: list[int]) -> list[dict]:
    """One row per suite and mc_num: the tasks' requests over the sum of their median times (both arms)."""
    summed = []
    for kind, names in suites.items():
        for mc_num in mc_nums:
            parts = [row for row in rows if row["workload"] in names and row["mc_num"] == mc_num]
            if not parts:
                continue
            requests = sum(row["requests"] for row in parts)
            seconds = {arm: sum(row["median_seconds"][arm] for row in parts) for arm in ("reference", "batched")}
            work = {arm: {key: sum(row[f"{arm}_work"][key] for row in parts)
                          for key in ("passes", "rows", "tokens", "logit_vectors")}
                    for arm in ("reference", "batched")}
            lengths = [row["answer_tokens"] for row in parts]
            summed.append({
                "workload": f"commonsense, {len(parts)} tasks ({kind} tokens)",
                "suite_of": [row["workload"] for row in parts],
                "requests": requests,
                "answer_tokens": {"min": min(part["min"] for part in lengths),
                                  "mean": round(sum(part["mean"] * row["requests"] for part, row in zip(lengths, parts))
                                                / requests, 1),
                                  "max": max(part["max"] for part in lengths)},
                "mc_num": mc_num,
                "reference_requests_per_s": round(requests / seconds["reference"], 2),
                "batched_requests_per_s": round(requests / seconds["batched"], 2),
                "speedup": round(seconds["reference"] / seconds["batched"], 2),
                "token_ratio": round(work["reference"]["tokens"] / work["batched"]["tokens"], 2),
                "median_seconds": seconds,
                "reference_work": work["reference"],
                "batched_work": work["batched"],
                "max_abs_difference": max(row["max_abs_difference"] for row in parts),
            })
    return summed


def markdown_table(rows: list[dict], mc_nums: list[int]) -> str:
    """speedup (token ratio) per workload and mc_num."""
    lines = ["| workload (answer tokens) | " + " | ".join(f"mc_num {mc}" for mc in mc_nums) + " |",
             "|---|" + "---|" * len(mc_nums)]
    for workload in dict.fromkeys(row["workload"] for row in rows):
        mine = {row["mc_num"]: row for row in rows if row["workload"] == workload}
        tokens = next(iter(mine.values()))["answer_tokens"]
        cells = [f"{mine[mc]['speedup']}× ({mine[mc]['token_ratio']}×)" for mc in mc_nums]
        lines.append(f"| {workload} ({tokens['min']}–{tokens['max']}, mean {tokens['mean']}) | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run: mc_num 1 and 32, 3 questions (6 in BPE), 1 repeat")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="LLM-Adapters folder of the real tasks")
    parser.add_argument("--mc-num", type=int, nargs="+", help="override the mode's mc_num values")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass, for both (LLaDA's default)")
    arguments = parser.parse_args()
    mode = "quick" if arguments.quick else "full"
    settings = dict(SETTINGS[mode], **({"mc_num": arguments.mc_num} if arguments.mc_num else {}))
    started = time.perf_counter()
    torch.set_num_threads(1)
    backbone = load_backbone(arguments.model, dtype="float32", device="cpu")
    found, skipped, about = workloads(backbone, arguments.data_dir, settings["questions"], settings["bpe_questions"])
    rows = []
    for workload, requests in found.items():
        for mc_num in settings["mc_num"]:
            rows.append({"workload": workload, **measure(backbone, requests, mc_num, arguments.batch_size,
                                                          settings["repeats"])})
            print(json.dumps({key: rows[-1][key] for key in ("workload", "mc_num", "speedup", "token_ratio")}),
                  flush=True)
    rows = suite_rows(rows, about["suites"], settings["mc_num"]) + rows
    table = markdown_table(rows, settings["mc_num"])
    report = {
        "benchmark": "Monte-Carlo log-likelihood: batched across requests vs one request at a time",
        "command": " ".join(["python", "benchmarks/loglikelihood/run.py", *sys.argv[1:]]),
        "mode": mode,
        "model": arguments.model,
        "settings": {"rows_per_forward": arguments.batch_size, "torch_threads": 1, "questions": settings["questions"],
                     "bpe_questions": settings["bpe_questions"],
                     "repeats": settings["repeats"], "timing": "median of interleaved repeats"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "goal": "batched >= 3x the reference's requests/s at the same mc_num",
        "bpe_tokenizer": about["bpe"],
        "skipped": skipped,
        "results": rows,
        "table": table,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_bytes(arguments.output, (json.dumps(report, indent=2) + "\n").encode())
    print(table)
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
