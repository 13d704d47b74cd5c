"""Requests/s of the batched Monte-Carlo log-likelihood against the one-request-at-a-time reference (LLaDA's loop).

Both compute the same estimate (the same samples per request; the largest difference is written down) at the same
`mc_num` and the same number of rows per forward pass. The batched estimator gains where the reference wastes work:
identical samples of a short answer are computed once, and rows of several requests fill a forward pass that one
request alone would leave part-empty. Workloads are multiple-choice sets built from the built-in tasks (no
download): each prompt with four candidate answers, of short, medium or long length in byte-level tokens.

    python benchmarks/loglikelihood/run.py            # writes benchmarks/results/loglikelihood.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import torch

from dllm_peft.builtin_tasks import task_records
from dllm_peft.diffusion.likelihood import log_likelihoods, reference_log_likelihood
from dllm_peft.io import atomic_write_bytes
from dllm_peft.models import tiny_llada

RESULTS = Path(__file__).resolve().parents[1] / "results" / "loglikelihood.json"
WORKLOADS = {"short answers (addition)": "addition", "medium answers (reverse)": "reverse",
             "long answers (uppercase)": "uppercase"}


def multiple_choice_requests(backbone, task: str, prompts: int) -> list[tuple[list[int], list[int]]]:
    """Each prompt with its own answer and three others, as lm-eval's multiple-choice tasks send them."""
    records = task_records(task, "test", prompts + 3)
    requests = []
    for index in range(prompts):
        context = backbone.encode(records[index]["prompt"])
        requests += [(context, backbone.encode(records[index + shift]["response"])) for shift in range(4)]
    return requests


def one_request_at_a_time(backbone, requests, mc_num: int, batch_size: int) -> list[float]:
    return [reference_log_likelihood(backbone, prompt, answer, mc_num, batch_size) for prompt, answer in requests]


def fastest(run, repeats: int) -> tuple[float, list[float]]:
    best, values = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        values = run()
        best = min(best, time.perf_counter() - started)
    return best, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mc-num", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per workload (four requests each)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass, for both (LLaDA's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    backbone = tiny_llada(seed=0)
    rows = []
    for workload, task in WORKLOADS.items():
        requests = multiple_choice_requests(backbone, task, arguments.prompts)
        lengths = [len(answer) for _, answer in requests]
        for mc_num in arguments.mc_num:
            reference_seconds, reference = fastest(
                partial(one_request_at_a_time, backbone, requests, mc_num, arguments.batch_size), arguments.repeats
            )
            batched_seconds, batched = fastest(
                partial(log_likelihoods, backbone, requests, mc_num, arguments.batch_size), arguments.repeats
            )
            rows.append({
                "workload": workload,
                "answer_tokens": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1),
                                  "max": max(lengths)},
                "requests": len(requests),
                "mc_num": mc_num,
                "reference_requests_per_s": round(len(requests) / reference_seconds, 2),
                "batched_requests_per_s": round(len(requests) / batched_seconds, 2),
                "speedup": round(reference_seconds / batched_seconds, 2),
                "max_abs_difference": max(abs(x - y) for x, y in zip(reference, batched)),
            })
            print(json.dumps(rows[-1]))
    report = {
        "benchmark": "Monte-Carlo log-likelihood: batched across requests vs one request at a time",
        "model": "tiny-llada (2 blocks, d_model 64, byte tokenizer)",
        "settings": {"rows_per_forward": arguments.batch_size, "torch_threads": arguments.threads,
                     "repeats": arguments.repeats, "timing": "fastest repeat"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "goal": "batched >= 3x the reference's requests/s at the same mc_num",
        "results": rows,
    }
    atomic_write_bytes(RESULTS, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
