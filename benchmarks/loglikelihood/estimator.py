"""Accuracy per unit of compute: the adaptive log-likelihood estimator against LLaDA's reference estimator (issue 17).

On the commonsense test files of `--data-dir` (boolq, piqa, arc_easy, arc_challenge, openbookqa), in byte tokens and
in the BPE tokens of `run.py`, the first few questions of each task are scored, for several seeds, by
- `ref128`: the reference estimator at mc_num 128 (`log_likelihoods`, the batched implementation that gives exactly
  `reference_log_likelihood`'s numbers; the tokens the one-request-at-a-time loop would feed are counted too);
- `adaptive`: `adaptive_estimates` at mc_num 128 (the most samples per option) and stop_se 3;
and once, with another seed, by `ref1024`, the reference at mc_num 1024: the high-precision answer both are judged by.
Per task and for the suite: how often each arm's answer (argmax of the options' log-likelihoods, lm-eval's `acc`)
agrees with ref1024's, the tokens each feeds the model (padding included), and requests/s (the two arms interleaved
per seed, alternating which goes first, in one process on one thread).

    nice python benchmarks/loglikelihood/estimator.py     # writes benchmarks/results/loglikelihood_estimator.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DATA_DIR, REAL_TASKS, ROOT, bpe_requests, real_requests, subword_encoder  # noqa: E402

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.diffusion.adaptive_likelihood import adaptive_estimates  # noqa: E402
from dllm_peft.diffusion.likelihood import log_likelihoods  # noqa: E402
from dllm_peft.models import DEFAULT_MODEL_NAME, load_backbone  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "loglikelihood_estimator.json"
TRUTH_SEED = 1000


class TokenCounter:
    """Counts the rows and tokens that go through `backbone.logits` while it is installed."""

    def __init__(self, backbone):
        self.backbone, self.tokens, self.rows = backbone, 0, 0

    def __enter__(self):
        logits = self.backbone.logits

        def counting(input_ids, *args, **kwargs):
            self.tokens += input_ids.numel()
            self.rows += input_ids.shape[0]
            return logits(input_ids, *args, **kwargs)

        self.backbone.logits = counting
        return self

    def __exit__(self, *exc):
        del self.backbone.logits


def answers(scores: list[float], sizes: list[int]) -> list[int]:
    """The chosen option of each question (argmax of its options' scores)."""
    chosen, start = [], 0
    for size in sizes:
        block = scores[start : start + size]
        chosen.append(max(range(size), key=block.__getitem__))
        start += size
    return chosen


def option_counts(requests) -> list[int]:
    """Options per question: the runs of consecutive requests with one context."""
    sizes, previous = [], None
    for prompt, _ in requests:
        if prompt != previous:
            sizes.append(0)
        sizes[-1] += 1
        previous = prompt
    return sizes


def measure(backbone, requests, sizes, seeds, mc_num, stop_se, batch_size) -> dict:
    with TokenCounter(backbone) as truth_work:
        truth = answers(log_likelihoods(backbone, requests, 8 * mc_num, batch_size, TRUTH_SEED), sizes)
    arms = {"ref128": {"seconds": 0.0, "tokens": 0, "rows": 0, "agree": 0},
            "adaptive": {"seconds": 0.0, "tokens": 0, "rows": 0, "agree": 0, "samples": 0}}
    for number, seed in enumerate(seeds):
        order = ("ref128", "adaptive") if number % 2 == 0 else ("adaptive", "ref128")
        for arm in order:
            with TokenCounter(backbone) as work:
                started = time.perf_counter()
                if arm == "ref128":
                    scores = log_likelihoods(backbone, requests, mc_num, batch_size, seed)
                else:
                    estimates = adaptive_estimates(backbone, requests, mc_num, batch_size, seed, stop_se)
                    scores = [estimate.value for estimate in estimates]
                    arms[arm]["samples"] += sum(estimate.samples for estimate in estimates)
                arms[arm]["seconds"] += time.perf_counter() - started
            arms[arm]["tokens"] += work.tokens
            arms[arm]["rows"] += work.rows
            arms[arm]["agree"] += sum(a == b for a, b in zip(answers(scores, sizes), truth))
    runs = len(seeds)
    loop_tokens = runs * mc_num * sum(len(prompt) + len(answer) for prompt, answer in requests)
    return summarise(arms, len(requests) * runs, len(sizes) * runs, loop_tokens, truth_work.tokens)


def summarise(arms, requests, questions, loop_tokens, truth_tokens) -> dict:
    row = {"questions_x_seeds": questions, "requests_x_seeds": requests, "llada_loop_tokens": loop_tokens,
           "ref1024_tokens": truth_tokens}
    for name, arm in arms.items():
        row[name] = {"agreement_with_ref1024": round(arm["agree"] / questions, 4), "agree": arm["agree"],
                     "tokens": arm["tokens"], "rows": arm["rows"], "seconds": round(arm["seconds"], 2),
                     "requests_per_s": round(requests / arm["seconds"], 3)}
    if "samples" in arms["adaptive"]:
        row["adaptive"]["mean_samples_per_request"] = round(arms["adaptive"]["samples"] / requests, 1)
    row["token_ratio"] = round(arms["ref128"]["tokens"] / arms["adaptive"]["tokens"], 2)
    row["token_ratio_vs_llada_loop"] = round(loop_tokens / arms["adaptive"]["tokens"], 2)
    row["speedup"] = round(arms["ref128"]["seconds"] / arms["adaptive"]["seconds"], 2)
    return row


def suite(rows: dict[str, dict]) -> dict:
    arms = {name: {"seconds": sum(row[name]["seconds"] for row in rows.values()),
                   "tokens": sum(row[name]["tokens"] for row in rows.values()),
                   "rows": sum(row[name]["rows"] for row in rows.values()),
                   "agree": sum(row[name]["agree"] for row in rows.values())} for name in ("ref128", "adaptive")}
    return summarise(arms, sum(row["requests_x_seeds"] for row in rows.values()),
                     sum(row["questions_x_seeds"] for row in rows.values()),
                     sum(row["llada_loop_tokens"] for row in rows.values()),
                     sum(row["ref1024_tokens"] for row in rows.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--questions", type=int, default=2, help="questions per task in byte tokens")
    parser.add_argument("--bpe-questions", type=int, default=4, help="questions per task in BPE tokens")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--stop-se", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    backbone = load_backbone(DEFAULT_MODEL_NAME, dtype="float32", device="cpu")
    encoder = subword_encoder(arguments.data_dir)
    seeds = list(range(arguments.seeds))
    report = {
        "benchmark": "adaptive log-likelihood estimator vs the reference at mc_num 128, judged by the reference at "
                     "mc_num 1024",
        "command": " ".join(["python", "benchmarks/loglikelihood/estimator.py", *sys.argv[1:]]),
        "model": DEFAULT_MODEL_NAME,
        "settings": {"mc_num": arguments.mc_num, "stop_se": arguments.stop_se, "seeds": seeds,
                     "truth": f"reference at mc_num {8 * arguments.mc_num}, seed {TRUTH_SEED}",
                     "questions_per_task": {"byte": arguments.questions, "BPE": arguments.bpe_questions},
                     "rows_per_forward": arguments.batch_size, "torch_threads": 1},
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, shared 2-core machine, niced",
        "goal": "adaptive agreement >= ref128's, with >= 4x fewer model tokens and >= 4x requests/s",
        "tasks": {},
    }
    for kind, questions in (("BPE", arguments.bpe_questions), ("byte", arguments.questions)):
        for task in REAL_TASKS:
            if kind == "byte":
                requests = real_requests(backbone.encode, task, arguments.data_dir, questions)
            else:
                requests = bpe_requests(encoder, task, arguments.data_dir, questions)
            sizes = option_counts(requests)
            row = measure(backbone, requests, sizes, seeds, arguments.mc_num, arguments.stop_se, arguments.batch_size)
            report["tasks"][f"{task} ({kind} tokens)"] = row
            print(json.dumps({"task": f"{task} ({kind})", "ref128": row["ref128"]["agree"],
                              "adaptive": row["adaptive"]["agree"], "of": row["questions_x_seeds"],
                              "token_ratio": row["token_ratio"], "speedup": row["speedup"]}), flush=True)
            for suite_kind in ("BPE", "byte"):
                members = {name: value for name, value in report["tasks"].items() if f"({suite_kind} tokens)" in name}
                if members:
                    report[f"suite ({suite_kind} tokens)"] = suite(members)
            report["suite (both)"] = suite(report["tasks"])
            report["seconds"] = round(time.perf_counter() - started, 1)
            atomic_write_bytes(arguments.output, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
