"""Accuracy per unit of compute: the adaptive log-likelihood estimator against LLaDA's reference estimator (issue 17).

On the commonsense test files of `--data-dir` (boolq, piqa, arc_easy, arc_challenge, openbookqa), in byte tokens and
in the BPE tokens of `run.py`, questions of each task are scored, for several seeds, by
- `ref128`: the reference estimator at mc_num 128 (`log_likelihoods`, the batched implementation that gives exactly
  `reference_log_likelihood`'s numbers; the tokens the one-request-at-a-time loop would feed are counted too);
- `adaptive`: `adaptive_estimates` at mc_num 128 (the most samples per option) with its defaults (or `--stop-se`,
  `--futility-se`);
and once by the judge: the exact value (every mask enumerated, `exact_log_likelihood`) when every option of a question
has at most `--exact-max-length` tokens, else `ref1024`, the reference at mc_num 1024 (seed 1000). Agreement with
ref1024 alone is reported too: ref1024 is itself an estimate (its RMS distance from the exact value, over the answers
of 2+ tokens judged exactly, is in the JSON), and it shares the reference's design with ref128.
Per task and for the suite: how often each arm's answer (argmax of the options' log-likelihoods, lm-eval's `acc`)
agrees with the judge's, the tokens each feeds the model (padding included), and requests/s (the two arms interleaved
per seed, alternating which goes first, in one process on one thread). Both arms are random only through their
Monte-Carlo draws, so what is compared is each arm's expected agreement on the same questions: the difference in
agreements (adaptive − ref128) is reported with a 95 % interval, a bootstrap over questions (each question's seeds
stay together), and the report uses 10 seeds so that the draws' noise in that difference is small. `--sweep` adds adaptive arms at other
stopping settings (agreement and tokens only): how the defaults were chosen, on questions the report does not use
(`--skip-bpe 8 --bpe-questions 24 --skip 2 --questions 3 --seeds 3`).

    nice python benchmarks/loglikelihood/estimator.py     # writes benchmarks/results/loglikelihood_estimator.json
    nice python benchmarks/loglikelihood/estimator.py --sweep --skip-bpe 8 --bpe-questions 24 --skip 2 --questions 3 \\
        --seeds 3 --output benchmarks/results/loglikelihood_estimator_tuning.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DATA_DIR, REAL_TASKS, ROOT, bpe_requests, real_requests, subword_encoder  # noqa: E402

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.diffusion.adaptive_likelihood import (  # noqa: E402
    FUTILITY_SE,
    STOP_SE,
    adaptive_estimates,
    exact_log_likelihood,
)
from dllm_peft.diffusion.likelihood import log_likelihoods  # noqa: E402
from dllm_peft.models import DEFAULT_MODEL_NAME, load_backbone  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "loglikelihood_estimator.json"
TRUTH_SEED = 1000
SWEEP = ((3.0, 0.0), (2.0, 0.0), (1.5, 0.0), (1.25, 0.0), (1.0, 0.0), (1.25, 0.25))
BOOTSTRAP = 10000  # resamples of the questions for the interval of the difference in agreements


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


def judge(backbone, requests, sizes, mc_num, batch_size, exact_max_length) -> tuple[list[int], list[int], dict]:
    """The judge's answers (exact where every option is short enough, else ref1024) and ref1024's own answers."""
    with TokenCounter(backbone) as work:
        reference = log_likelihoods(backbone, requests, 8 * mc_num, batch_size, TRUTH_SEED)
    scores, start, exact_questions = list(reference), 0, 0
    for size in sizes:
        block = requests[start : start + size]
        if all(len(answer) <= exact_max_length for _, answer in block):
            scores[start : start + size] = [exact_log_likelihood(backbone, prompt, answer, batch_size)
                                            for prompt, answer in block]
            exact_questions += 1
        start += size
    compared = [(score, estimate) for score, estimate, (_, answer) in zip(scores, reference, requests)
                if len(answer) > 1 and score != estimate]  # judged exactly; one-token answers are exact in both
    return answers(scores, sizes), answers(reference, sizes), {
        "ref1024_tokens": work.tokens, "questions_judged_exactly": exact_questions,
        "ref1024_compared_to_exact": len(compared),
        "ref1024_squared_error": sum((estimate - score) ** 2 for score, estimate in compared)}


def measure(backbone, requests, sizes, arguments) -> dict:
    truth, ref1024, about = judge(backbone, requests, sizes, arguments.mc_num, arguments.batch_size,
                                  arguments.exact_max_length)
    arms = {name: {"seconds": 0.0, "tokens": 0, "rows": 0, "agree": 0, "agree_ref1024": 0, "samples": 0}
            for name in ("ref128", "adaptive")}
    gains = [0] * len(sizes)  # per question, over the seeds: adaptive's agreements − ref128's
    sweep = {f"stop_se {stop} futility_se {futility}": {"tokens": 0, "agree": 0, "agree_ref1024": 0}
             for stop, futility in (SWEEP if arguments.sweep else ())}
    for number, seed in enumerate(range(arguments.seeds)):
        order = ("ref128", "adaptive") if number % 2 == 0 else ("adaptive", "ref128")
        for arm in order:
            with TokenCounter(backbone) as work:
                started = time.perf_counter()
                if arm == "ref128":
                    scores = log_likelihoods(backbone, requests, arguments.mc_num, arguments.batch_size, seed)
                else:
                    estimates = adaptive_estimates(backbone, requests, arguments.mc_num, arguments.batch_size, seed,
                                                   arguments.stop_se, futility_se=arguments.futility_se)
                    scores = [estimate.value for estimate in estimates]
                    arms[arm]["samples"] += sum(estimate.samples for estimate in estimates)
                arms[arm]["seconds"] += time.perf_counter() - started
            chosen = answers(scores, sizes)
            arms[arm]["tokens"] += work.tokens
            arms[arm]["rows"] += work.rows
            arms[arm]["agree"] += sum(a == b for a, b in zip(chosen, truth))
            for question, (a, b) in enumerate(zip(chosen, truth)):
                gains[question] += (a == b) * (1 if arm == "adaptive" else -1)
            arms[arm]["agree_ref1024"] += sum(a == b for a, b in zip(chosen, ref1024))
        for (stop, futility), row in zip(SWEEP, sweep.values()):
            with TokenCounter(backbone) as work:
                estimates = adaptive_estimates(backbone, requests, arguments.mc_num, arguments.batch_size, seed, stop,
                                               futility_se=futility)
            chosen = answers([estimate.value for estimate in estimates], sizes)
            row["tokens"] += work.tokens
            row["agree"] += sum(a == b for a, b in zip(chosen, truth))
            row["agree_ref1024"] += sum(a == b for a, b in zip(chosen, ref1024))
    loop_tokens = arguments.seeds * arguments.mc_num * sum(len(prompt) + len(answer) for prompt, answer in requests)
    questions = {"questions_x_seeds": len(sizes) * arguments.seeds, "requests_x_seeds": len(requests) * arguments.seeds,
                 "questions_judged_exactly": about["questions_judged_exactly"] * arguments.seeds,
                 "llada_loop_tokens": loop_tokens, "ref1024_tokens": about["ref1024_tokens"],
                 "ref1024_compared_to_exact": about["ref1024_compared_to_exact"],
                 "ref1024_squared_error": about["ref1024_squared_error"], "gains": gains}
    return summarise(arms, sweep, questions)


def summarise(arms: dict, sweep: dict, counts: dict) -> dict:
    row = dict(counts)
    questions, requests = counts["questions_x_seeds"], counts["requests_x_seeds"]
    for name, arm in arms.items():
        row[name] = {"agreement": round(arm["agree"] / questions, 4), "agree": arm["agree"],
                     "agree_with_ref1024": arm["agree_ref1024"], "tokens": arm["tokens"], "rows": arm["rows"],
                     "seconds": round(arm["seconds"], 4),
                     "requests_per_s": round(requests / max(arm["seconds"], 1e-9), 3)}
    row["adaptive"]["samples"] = arms["adaptive"]["samples"]
    row["adaptive"]["mean_samples_per_request"] = round(arms["adaptive"]["samples"] / requests, 1)
    row["token_ratio"] = round(arms["ref128"]["tokens"] / arms["adaptive"]["tokens"], 2)
    row["token_ratio_vs_llada_loop"] = round(counts["llada_loop_tokens"] / arms["adaptive"]["tokens"], 2)
    row["speedup"] = round(arms["ref128"]["seconds"] / max(arms["adaptive"]["seconds"], 1e-9), 2)
    row["difference"] = difference(counts["gains"])
    if counts["ref1024_compared_to_exact"]:  # how far the 1024-sample judge is from the exact value
        row["ref1024_rms_nats_from_exact"] = round(
            (counts["ref1024_squared_error"] / counts["ref1024_compared_to_exact"]) ** 0.5, 3)
    if sweep:
        row["sweep"] = {name: {"agree": arm["agree"], "agree_with_ref1024": arm["agree_ref1024"], "tokens": arm["tokens"],
                               "token_ratio": round(arms["ref128"]["tokens"] / arm["tokens"], 2)}
                        for name, arm in sweep.items()}
    return row


def suite(rows: dict[str, dict]) -> dict:
    """The sum of the task rows, summarised as one."""
    def total(arm: str) -> dict:
        return {"seconds": sum(row[arm]["seconds"] for row in rows.values()),
                "tokens": sum(row[arm]["tokens"] for row in rows.values()),
                "rows": sum(row[arm]["rows"] for row in rows.values()),
                "agree": sum(row[arm]["agree"] for row in rows.values()),
                "agree_ref1024": sum(row[arm]["agree_with_ref1024"] for row in rows.values()),
                "samples": sum(row[arm].get("samples", 0) for row in rows.values())}

    arms = {name: total(name) for name in ("ref128", "adaptive")}
    first = next(iter(rows.values()))
    sweep = {name: {"tokens": sum(row["sweep"][name]["tokens"] for row in rows.values()),
                    "agree": sum(row["sweep"][name]["agree"] for row in rows.values()),
                    "agree_ref1024": sum(row["sweep"][name]["agree_with_ref1024"] for row in rows.values())}
             for name in first.get("sweep", {})}
    counts = {key: sum(row[key] for row in rows.values()) for key in
              ("questions_x_seeds", "requests_x_seeds", "questions_judged_exactly", "llada_loop_tokens",
               "ref1024_tokens", "ref1024_compared_to_exact", "ref1024_squared_error")}
    counts["gains"] = [gain for row in rows.values() for gain in row["difference"]["per_question"]]
    return summarise(arms, sweep, counts)


def difference(gains: list[int]) -> dict:
    """adaptive − ref128 agreements, with a 95 % percentile interval from resampling the questions (seeds together)."""
    draw = random.Random(0)
    totals = sorted(sum(draw.choices(gains, k=len(gains))) for _ in range(BOOTSTRAP)) if gains else [0]
    return {"agreements": sum(gains), "ci95": [totals[int(0.025 * len(totals))], totals[int(0.975 * len(totals)) - 1]],
            "per_question": gains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--questions", type=int, default=2, help="questions per task in byte tokens")
    parser.add_argument("--bpe-questions", type=int, default=8, help="questions per task in BPE tokens")
    parser.add_argument("--skip", type=int, default=0, help="questions skipped per task before those (bytes)")
    parser.add_argument("--skip-bpe", type=int, default=0, help="questions skipped per task before those (BPE)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--stop-se", type=float, default=STOP_SE)
    parser.add_argument("--futility-se", type=float, default=FUTILITY_SE)
    parser.add_argument("--exact-max-length", type=int, default=10, help="judge exactly up to this many answer tokens")
    parser.add_argument("--sweep", action="store_true", help="also adaptive arms at other stopping settings")
    parser.add_argument("--batch-size", type=int, default=32)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    backbone = load_backbone(DEFAULT_MODEL_NAME, dtype="float32", device="cpu")
    encoder = subword_encoder(arguments.data_dir)
    report = {
        "benchmark": "adaptive log-likelihood estimator vs the reference at mc_num 128, judged by the exact value "
                     "(short answers) or the reference at mc_num 1024",
        "command": " ".join(["python", "benchmarks/loglikelihood/estimator.py", *sys.argv[1:]]),
        "model": DEFAULT_MODEL_NAME,
        "settings": {"mc_num": arguments.mc_num, "stop_se": arguments.stop_se, "futility_se": arguments.futility_se,
                     "seeds": list(range(arguments.seeds)),
                     "judge": f"exact when every option has <= {arguments.exact_max_length} tokens, else the reference "
                              f"at mc_num {8 * arguments.mc_num}, seed {TRUTH_SEED}",
                     "questions_per_task": {"byte": arguments.questions, "BPE": arguments.bpe_questions},
                     "skipped_per_task": {"byte": arguments.skip, "BPE": arguments.skip_bpe},
                     "rows_per_forward": arguments.batch_size, "torch_threads": 1},
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, shared 2-core machine, niced",
        "goal": "adaptive agreement >= ref128's, with >= 4x fewer model tokens and >= 4x requests/s (suite, both)",
        "tasks": {},
    }
    for kind, skip, questions in (("BPE", arguments.skip_bpe, arguments.bpe_questions),
                                  ("byte", arguments.skip, arguments.questions)):
        for task in REAL_TASKS:
            if kind == "byte":
                requests = real_requests(backbone.encode, task, arguments.data_dir, skip + questions)
            else:
                requests = bpe_requests(encoder, task, arguments.data_dir, skip + questions)
            sizes = option_counts(requests)
            requests, sizes = requests[sum(sizes[:skip]) :], sizes[skip:]
            row = measure(backbone, requests, sizes, arguments)
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
