"""KV-cache staleness on *trained* adapters: `python benchmarks/nara_lambda/cache_staleness.py`.

A prefix or dual cache (Fast-dLLM) reuses keys/values computed at an earlier step; for NaRA they were also computed at
an earlier λ, so C(λ) in the cached positions is stale. On random adapters (C ≈ I) NaRA and LoRA look alike, so this
trains both on the default task first (`train`, default settings but `--max-steps`, same seed), then samples the
default task's test prompts with the settings `dllm-peft eval` uses (gen length 32, one block) plus `--threshold`, and
counts the answers that change against no cache, for prefix and dual caches refreshed every N steps (0 = at block
starts only). Time: CPU time of the whole batch relative to no cache (this process, 1 thread).
Writes `benchmarks/results/nara_cache_staleness.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.adapters.files import load_adapter  # noqa: E402
from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.config import SamplerConfig, TrainConfig  # noqa: E402
from dllm_peft.data.tasks import task_records  # noqa: E402
from dllm_peft.diffusion.sampler import sample  # noqa: E402
from dllm_peft.models import load_backbone  # noqa: E402
from dllm_peft.training.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "nara_cache_staleness.json"
REFRESH = (0, 4, 2, 1)


def run_sampler(backbone, prompts, settings: SamplerConfig):
    generators = [torch.Generator().manual_seed(index) for index in range(len(prompts))]
    started = time.thread_time()
    result = sample(backbone, prompts, settings, generators)
    return result, time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of each adapter")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    defaults = TrainConfig()
    task = defaults.data.split(":", 1)[1]
    eval_settings = SamplerConfig(gen_length=32, block_length=32, steps=32, threshold=args.threshold)
    report = {"command": " ".join(["python", "benchmarks/nara_lambda/cache_staleness.py", *sys.argv[1:]]),
              "train": f"dllm-peft train --method M --max-steps {args.steps} (defaults otherwise: {defaults.data}, "
                       f"--padding {defaults.padding} --noise-draw {defaults.noise_draw})",
              "sampler": dataclasses.asdict(eval_settings), "prompts": args.prompts, "methods": {}}
    with tempfile.TemporaryDirectory() as directory:
        for method in ("lora", "nara"):
            output = str(Path(directory) / method)
            train(TrainConfig(method=method, max_steps=args.steps, output=output, val_size=0))
            backbone = load_backbone(defaults.model)
            load_adapter(backbone, output)
            backbone.model.eval()
            prompts = [backbone.encode(record["prompt"]) for record in task_records(task, "test", args.prompts)]
            answers = [record["response"] for record in task_records(task, "test", args.prompts)]
            plain, plain_seconds = run_sampler(backbone, prompts, eval_settings)
            rows = {"none": {"answers_changed_vs_no_cache": 0, "time_vs_no_cache": 1.0,
                             "correct": sum(backbone.decode(t).strip() == a.strip() for t, a in zip(plain.tokens, answers))}}
            for cache in ("prefix", "dual"):
                for refresh in REFRESH:
                    settings = dataclasses.replace(eval_settings, cache=cache, cache_refresh=refresh)
                    result, seconds = run_sampler(backbone, prompts, settings)
                    rows[f"{cache}_refresh_{refresh}"] = {
                        "answers_changed_vs_no_cache": sum(a != b for a, b in zip(result.tokens, plain.tokens)),
                        "time_vs_no_cache": round(seconds / plain_seconds, 3),
                        "correct": sum(backbone.decode(t).strip() == a.strip() for t, a in zip(result.tokens, answers)),
                    }
            report["methods"][method] = rows
            print(json.dumps({method: rows}), flush=True)
    # The default refresh: the fewest refreshes (0 = at block starts only, then every 4, 2, 1 steps) that keep NaRA's
    # changes at LoRA's level, i.e. at most LoRA's count (no refresh) plus two standard errors of the difference of
    # two binomial counts at LoRA's rate (so one answer either way on 64 prompts is not read as a difference).
    choice, margins = {}, {}
    for cache in ("prefix", "dual"):
        lora = report["methods"]["lora"][f"{cache}_refresh_0"]["answers_changed_vs_no_cache"]
        rate = max(lora, 1) / args.prompts
        margins[cache] = round(2 * math.sqrt(2 * args.prompts * rate * (1 - rate)), 2)
        choice[cache] = next((refresh for refresh in REFRESH if report["methods"]["nara"][f"{cache}_refresh_{refresh}"]
                              ["answers_changed_vs_no_cache"] <= lora + margins[cache]), 1)
    report["lora_level_margin_answers"] = margins
    report["lowest_refresh_at_lora_level"] = choice
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_bytes(args.output, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
