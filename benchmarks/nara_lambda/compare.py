"""Which noise-level design should `dllm-peft train` use by default? `python benchmarks/nara_lambda/compare.py`.

Two designs make the λ that NaRA's hypernetwork trains on cover the λ the sampler routes (issue 16,
docs/noise-level.md):
* canvas:     `--padding canvas --noise-draw grid`: each response EOS-padded to a multiple of 64; λ = k / L exactly;
* continuous: `--padding longest --noise-draw continuous`: no padding beyond the batch's longest; λ = the draw t,
              k = ⌈t·L⌉ masked, weight L / k;
and a control that does neither, longest-grid: `--padding longest --noise-draw grid` (the old default, uniform k),
and continuous-pad32: `--padding 32 --noise-draw continuous` (dense λ, responses EOS-padded to eval's 32-token canvas).
For each design this measures, and writes to `benchmarks/results/noise_design.json`:
1. accuracy: the README's first run with the design's flags (`task_gain.one_seed`: `dllm-peft train --method nara`
   then `dllm-peft eval --adapter out`, 3 seeds, `--jobs` of them at once); a seed whose `result.json` is already in
   `--workdir` is reused; `--reuse DESIGN=FILE` takes a design's runs from an earlier `task_gain.py` output instead;
2. cost: `--timing-steps` training steps of each design, one after the other in this run (`--val-size 0`), timed
   from process start to exit, plus the tokens per step from `metrics.jsonl`;
3. coverage: the λ values a default-length run routes (drawn as `train` draws them, 600 steps × 8 examples) against
   those the sampler routes for `dllm-peft eval` on the task (gen length 32) and `dllm-peft sample` (64): the share
   routed exactly and the largest distance from a sampler λ to the nearest trained λ.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "default_model"))

from task_gain import one_seed, run  # noqa: E402

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.config import SamplerConfig, TrainConfig  # noqa: E402
from dllm_peft.data.records import collate  # noqa: E402
from dllm_peft.diffusion.schedule import draw_noise, sampler_noise_levels  # noqa: E402
from dllm_peft.models import load_backbone  # noqa: E402
from dllm_peft.training.validation import batch_padding, load_training_data  # noqa: E402

DESIGNS = {
    "canvas": "--padding canvas --noise-draw grid",
    "continuous": "--padding longest --noise-draw continuous",
    "longest-grid": "--padding longest --noise-draw grid",  # neither: the control (round 1's old default, uniform k)
    "continuous-pad32": "--padding 32 --noise-draw continuous",  # both halves: dense λ, EOS tail of eval's canvas
}
RESULTS = ROOT / "benchmarks" / "results" / "noise_design.json"


def accuracy_runs(
    designs: list[str], seeds: int, workdir: Path, jobs: int, reused: dict[str, Path], run_only: set[int] | None
) -> dict:
    """{design: [one_seed result, ...]}, running the seeds not already in `workdir` (`jobs` at once; with `run_only`,
    only those seeds are run and the others are taken from `workdir` when there)."""
    results: dict[str, dict[int, dict]] = {design: {} for design in designs}
    pending = []
    for design in designs:
        if design in reused:
            runs = json.loads(reused[design].read_text())["default_task"]["runs"]
            results[design] = {r["seed"]: {**r, "reused_from": str(reused[design])} for r in runs[:seeds]}
            continue
        for seed in range(seeds):
            stored = workdir / design / f"seed{seed}" / "result.json"
            if stored.is_file():
                results[design][seed] = json.loads(stored.read_text())
            elif run_only is None or seed in run_only:
                pending.append((design, seed))
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(one_seed, seed, workdir / design / f"seed{seed}", False, shlex.split(DESIGNS[design])):
            (design, seed) for design, seed in pending
        }
        for future in concurrent.futures.as_completed(futures):
            design, seed = futures[future]
            result = future.result()
            (workdir / design / f"seed{seed}" / "result.json").write_text(json.dumps(result, indent=2))
            results[design][seed] = result
            print(json.dumps({"design": design, **result}), flush=True)
    return {design: [by_seed[seed] for seed in sorted(by_seed)] for design, by_seed in results.items()}


def timing(designs: list[str], steps: int, workdir: Path) -> dict:
    """Seconds and tokens of `steps` training steps per design, run one after the other."""
    out = {}
    for design in designs:
        directory = workdir / "timing" / design
        directory.mkdir(parents=True, exist_ok=True)
        command = ["dllm-peft", "train", "--method", "nara", "--max-steps", str(steps), "--val-size", "0",
                   "--overwrite", *shlex.split(DESIGNS[design])]
        seconds = run(command, directory, directory / "train.log")
        lines = [json.loads(line) for line in (directory / "out" / "metrics.jsonl").read_text().splitlines()]
        tokens = [line["tokens"] for line in lines if line.get("kind") == "train"]
        step_seconds = [line["tokens"] / line["tokens_per_second"] for line in lines if line.get("kind") == "train"]
        out[design] = {"command": " ".join(command), "wall_seconds": round(seconds, 1),
                       "tokens_per_step": statistics.mean(tokens),
                       "median_step_seconds": statistics.median(step_seconds)}
    return out


def coverage(designs: list[str]) -> dict:
    """Sampler λ vs the λ a default-length run of each design routes (drawn as `train` draws them)."""
    defaults = TrainConfig()
    torch.manual_seed(0)
    out = {}
    for design in designs:
        flags = shlex.split(DESIGNS[design])
        config = TrainConfig(padding=flags[1], noise_draw=flags[3])
        backbone = load_backbone(config.model)
        data = load_training_data(config, backbone)
        padding = batch_padding(config)
        routed = []
        generator = torch.Generator().manual_seed(0)
        steps = defaults.max_steps
        for step in range(steps):
            start = (step * config.batch_size) % len(data.train)
            batch = collate(data.train[start : start + config.batch_size], backbone.eos_id, **padding)
            lengths = batch.response_mask.sum(dim=1)  # (B,)
            t, counts = draw_noise(lengths, generator)
            routed.append(t if config.noise_draw == "continuous" else counts.float() / lengths.float())
        trained = torch.cat(routed).double()  # (steps·B,)
        values = {}
        for name, sampler in (("eval_gen32", SamplerConfig(gen_length=32, block_length=32, steps=32)),
                              ("sample_gen64", SamplerConfig())):
            levels = torch.tensor(sorted(set(sampler_noise_levels(sampler.gen_length, sampler.block_length,
                                                                  sampler.steps))), dtype=torch.float64)
            nearest = (levels[:, None] - trained[None, :]).abs().min(dim=1).values  # (levels,)
            values[name] = {"sampler_levels": len(levels),
                            "routed_exactly": int((nearest < 1e-9).sum()),
                            "max_distance_to_trained": float(nearest.max()),
                            "spacing_of_sampler_grid": 1 / sampler.gen_length}
        out[design] = {"trained_draws": len(trained), "distinct_trained_levels": len(set(trained.tolist())),
                       **values, "response_region_tokens_mean": float(torch.cat([
                           collate(data.train[s : s + 8], backbone.eos_id, **padding).response_mask.sum(1).float()
                           for s in range(0, len(data.train), 8)]).mean())}
    return out


def summary(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dllm-noise-design"))
    parser.add_argument("--reuse", action="append", default=[], help="DESIGN=FILE: runs from a task_gain.py output")
    parser.add_argument("--run-only", default=None, help="comma-separated seeds to run now (others: reused or left out)")
    parser.add_argument("--timing-steps", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    designs = args.designs.split(",")
    reused = {item.split("=", 1)[0]: Path(item.split("=", 1)[1]) for item in args.reuse}
    started = time.perf_counter()
    run_only = None if args.run_only is None else {int(seed) for seed in args.run_only.split(",")}
    runs = accuracy_runs(designs, args.seeds, args.workdir, args.jobs, reused, run_only)
    costs = timing(designs, args.timing_steps, args.workdir) if args.timing_steps else {}
    covered = coverage(designs)
    record = {
        "command": " ".join(["python", "benchmarks/nara_lambda/compare.py", *sys.argv[1:]]),
        "flags": {design: DESIGNS[design] for design in designs},
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "designs": {
            design: {
                "adapted": summary([r["adapted"] for r in runs[design]]),
                "base": summary([r["base"] for r in runs[design]]),
                "train_seconds": summary([r["train_seconds"] for r in runs[design]]),
                "runs": runs[design],
                "timing": costs.get(design),
                "coverage": covered[design],
            }
            for design in designs
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_bytes(args.output, (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps({d: {k: v["adapted"] for k, v in [("x", record["designs"][d])]} for d in designs}, indent=2))


if __name__ == "__main__":
    main()
