"""Training throughput and memory: our LoRA vs our NaRA, and our LoRA vs HF PEFT's LoRA, on one LLaDA backbone.

Every arm trains the same randomly initialised LLaDA (4 blocks, d_model 512, byte vocabulary) on the same batches
of the built-in `uppercase` task, EOS-padded to 128 tokens, with the step of `dllm_peft.training.train`: masked-diffusion loss
with per-micro-batch seeds, backward, clip at 1.0, AdamW. Adapters: rank 32 on q_proj, k_proj, v_proj, attn_out
(the NaRA recipe), dropout 0.05, scale 1 (PEFT: lora_alpha = r). Only the adapter differs between arms.

Speed: the three arms live in one process and take turns step by step (A B C, B C A, …), so a machine whose load
drifts slows every arm alike; each ratio is the median of per-step ratios. Time is CPU time (`time.process_time`)
with one intra-op thread, a measure of the work itself that other jobs on a shared machine barely disturb; wall-clock
figures are recorded beside it. Memory: each arm then runs alone in a fresh process, whose peak RSS (`ru_maxrss`) is
its own; the ratio is the median over those runs.

MFU (model FLOP utilisation): LoRA and NaRA train alone at d_model 512 (the shape above) and at d_model 1024 (4 blocks,
MLP 2752), and each step's FLOPs (`benchmarks/flops.py`: frozen base forward + activation gradients, the adapter's
forward + backward) over its median CPU time are divided by the best float32 matrix-product rate measured in the same
process, on the same single thread, with the same clock (`matmul_peak`, before and after the steps).

    python benchmarks/train_throughput/run.py            # 40 timed steps per arm + 3 memory runs each; MFU 6 steps
    python benchmarks/train_throughput/run.py --quick    # 8 timed steps + 1 memory run each; MFU 2 steps, a smoke run

Writes benchmarks/results/train_throughput.json (or --output PATH), with the command, the mode and the wall seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "train_throughput.json"
ARMS = ("lora", "nara", "peft-lora")
MODEL = dict(d_model=512, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=1376, max_sequence_length=256)
MFU_MODELS = {"d_model 512": MODEL,
              "d_model 1024": dict(d_model=1024, n_heads=16, n_kv_heads=16, n_layers=4, mlp_hidden_size=2752,
                                   max_sequence_length=256)}
MFU_ARMS = ("lora", "nara")
BATCH, LENGTH, RANK, SEED = 4, 128, 32, 0
TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out"]


def build(arm: str, model: dict = MODEL):
    """(backbone with the arm's adapter, trainable parameters, optimizer, batches), identical across arms."""
    import torch

    from dllm_peft.adapters.base import inject, trainable_parameters
    from dllm_peft.adapters.registry import build_adapter_config, get_method
    from dllm_peft.data.records import collate, prompt_response_pairs, tokenize_pairs
    from dllm_peft.data.tasks import task_records
    from dllm_peft.models import tiny_llada

    backbone = tiny_llada(seed=SEED, **model)
    examples, _ = tokenize_pairs(prompt_response_pairs(task_records("uppercase", "train", 64)), backbone, LENGTH)
    starts = range(0, len(examples), BATCH)
    batches = [collate(examples[start : start + BATCH], backbone.eos_id, pad_to=LENGTH) for start in starts]
    torch.manual_seed(SEED)
    if arm == "peft-lora":
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.05, target_modules=TARGETS, bias="none")
        backbone = dataclasses.replace(backbone, model=get_peft_model(backbone.model, peft_config))
    else:
        config = build_adapter_config(arm, rank=RANK, dropout=0.05, target_modules=tuple(TARGETS))
        inject(backbone.model, config, get_method(arm).layer_class, backbone.default_targets)
    parameters = trainable_parameters(backbone.model)
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, eps=1e-8)
    backbone.model.train()
    return backbone, parameters, optimizer, batches


def train_step(setup, step: int) -> tuple[float, float, int]:
    """One step as `dllm_peft.training.train` takes it. Returns (CPU seconds, wall seconds, tokens)."""
    import torch

    from dllm_peft.data.records import derived_seed
    from dllm_peft.diffusion.loss import masked_diffusion_loss

    backbone, parameters, optimizer, batches = setup
    batch = batches[step % len(batches)]
    torch.manual_seed(derived_seed(SEED, "dropout", step))  # the same dropout and masks in every arm
    generator = torch.Generator().manual_seed(derived_seed(SEED, "mask", step))
    began, began_wall = time.process_time(), time.perf_counter()
    out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, batch.attention_mask, generator)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.process_time() - began, time.perf_counter() - began_wall, batch.tokens


def timing(warmup: int, steps: int) -> dict:
    """All arms in this process, interleaved step by step in a rotating order."""
    import torch

    torch.set_num_threads(1)
    setups = {arm: build(arm) for arm in ARMS}
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    tokens = 0
    for step in range(warmup + steps):
        for arm in ARMS[step % len(ARMS) :] + ARMS[: step % len(ARMS)]:
            seconds, wall_seconds, tokens = train_step(setups[arm], step)
            if step >= warmup:
                cpu[arm].append(seconds)
                wall[arm].append(wall_seconds)
    return {
        "trainable_parameters": {arm: sum(p.numel() for p in setups[arm][1]) for arm in ARMS},
        "tokens_per_step": tokens,
        "cpu_step_seconds": cpu,
        "wall_step_seconds": wall,
    }


def memory(arm: str, steps: int) -> dict:
    """This process runs one arm only: its peak RSS, before and after training."""
    import torch

    torch.set_num_threads(1)
    setup = build(arm)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for step in range(steps):
        train_step(setup, step)
    return {"rss_before_training_mb": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def mfu(steps: int) -> dict:
    """LoRA and NaRA alone at each size of MFU_MODELS: FLOPs per step over median CPU step time, ÷ the measured peak."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.flops import lora, matmul_peak, nara, shape_of, training_step_flops

    torch.set_num_threads(1)
    peaks = [matmul_peak(torch.float32, clock=time.process_time)["flops_per_second"]]
    sizes = {}
    for name, model in MFU_MODELS.items():
        arms = {}
        for arm in MFU_ARMS:
            setup = build(arm, model)
            train_step(setup, 0)  # warm-up
            seconds = statistics.median(train_step(setup, step)[0] for step in range(1, steps + 1))
            shape = shape_of(setup[0].model.config)
            flops = training_step_flops(shape, LENGTH, lora(RANK) if arm == "lora" else nara(RANK), batch=BATCH)
            arms[arm] = {"flops_per_step": flops["total"], "flops_per_token": flops["total"] / (BATCH * LENGTH),
                         "cpu_step_seconds": seconds, "achieved_flops_per_second": flops["total"] / seconds}
        sizes[name] = {"model": {"family": "llada", **model}, "arms": arms}
    peaks.append(matmul_peak(torch.float32, clock=time.process_time)["flops_per_second"])
    peak = max(peaks)
    for entry in sizes.values():
        for row in entry["arms"].values():
            row["mfu"] = row["achieved_flops_per_second"] / peak
        entry["nara_over_lora_step_time"] = entry["arms"]["nara"]["cpu_step_seconds"] / entry["arms"]["lora"][
            "cpu_step_seconds"]
    return {
        "peak": {"flops_per_second": peak, "what": "best torch.mm rate, 1024 × 1024 float32, 1 thread, CPU time "
                 "(time.process_time), best of two 1-second measurements before and after the steps",
                 "measurements": peaks},
        "flops": "benchmarks/flops.py training_step_flops: matrix products only, model FLOPs",
        "steps": steps,
        "sizes": sizes,
    }


def in_subprocess(mode: str, arm: str, warmup: int, steps: int) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--arm", arm, "--warmup", str(warmup), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {arm} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per arm for peak RSS")
    parser.add_argument("--quick", action="store_true", help="8 timed steps, 1 memory run per arm")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    parser.add_argument("--mfu-steps", type=int, default=6, help="timed steps per arm and size for MFU")
    parser.add_argument("--worker", choices=("timing", "memory", "mfu"), help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker == "mfu":
            result = mfu(args.steps)
        else:
            result = timing(args.warmup, args.steps) if args.worker == "timing" else memory(args.arm, args.steps)
        print(json.dumps(result))
        return
    started = time.perf_counter()
    if args.quick:
        args.steps, args.memory_runs, args.mfu_steps = 8, 1, 2
    speed = in_subprocess("timing", ARMS[0], args.warmup, args.steps)
    utilisation = in_subprocess("mfu", ARMS[0], 0, args.mfu_steps)
    memory_runs = [{arm: in_subprocess("memory", arm, 0, 4) for arm in ARMS} for _ in range(args.memory_runs)]
    cpu, wall = speed["cpu_step_seconds"], speed["wall_step_seconds"]
    median = {
        arm: {
            "cpu_step_seconds": statistics.median(cpu[arm]),
            "tokens_per_cpu_second": speed["tokens_per_step"] / statistics.median(cpu[arm]),
            "wall_step_seconds": statistics.median(wall[arm]),
            "peak_rss_mb": statistics.median(run[arm]["peak_rss_mb"] for run in memory_runs),
            "rss_before_training_mb": statistics.median(run[arm]["rss_before_training_mb"] for run in memory_runs),
        }
        for arm in ARMS
    }
    ratios = {
        "nara_over_lora_step_time": ratio(cpu["nara"], cpu["lora"]),
        "ours_over_peft_lora_tokens_per_second": ratio(cpu["peft-lora"], cpu["lora"]),
        "ours_over_peft_lora_peak_rss": ratio(
            [run["lora"]["peak_rss_mb"] for run in memory_runs],
            [run["peft-lora"]["peak_rss_mb"] for run in memory_runs],
        ),
        "nara_over_lora_step_time_wall_clock": ratio(wall["nara"], wall["lora"]),
        "ours_over_peft_lora_tokens_per_second_wall_clock": ratio(wall["peft-lora"], wall["lora"]),
    }
    goals = {
        "nara_over_lora_step_time <= 1.05": ratios["nara_over_lora_step_time"] <= 1.05,
        "ours_over_peft_lora_tokens_per_second >= 1.0": ratios["ours_over_peft_lora_tokens_per_second"] >= 1.0,
        "ours_over_peft_lora_peak_rss <= 1.0": ratios["ours_over_peft_lora_peak_rss"] <= 1.0,
    }
    import peft
    import torch

    result = {
        "command": " ".join(["python", "benchmarks/train_throughput/run.py", *sys.argv[1:]]),
        "mode": "quick" if args.quick else "full",
        "wall_seconds": time.perf_counter() - started,
        "setup": {
            "model": {"family": "llada", **MODEL, "vocab": "byte (264 rows)"},
            "batch": BATCH,
            "tokens_per_example": LENGTH,
            "rank": RANK,
            "targets": TARGETS,
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "memory_runs": args.memory_runs,
            "threads": 1,
            "torch": torch.__version__,
            "peft": peft.__version__,
            "machine": platform.machine(),
        },
        "trainable_parameters": speed["trainable_parameters"],
        "median": median,
        "ratios": ratios,
        "goals_met": goals,
        "per_step": {"cpu_step_seconds": cpu, "wall_step_seconds": wall},
        "memory_runs": memory_runs,
        "mfu": utilisation,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    mfu_summary = {name: {arm: round(row["mfu"], 3) for arm, row in entry["arms"].items()}
                   for name, entry in utilisation["sizes"].items()}
    print(json.dumps({"median": median, "ratios": ratios, "goals_met": goals, "mfu": mfu_summary,
                      "peak_flops_per_second": utilisation["peak"]["flops_per_second"]}, indent=2))


if __name__ == "__main__":
    main()
