"""Trajectory-router benchmark: `python benchmarks/trajectory_router/run.py [--quick]` → `trajectory_router.json`.

LoRA-Diffusion's composition, end to end: two trajectory adapters are trained with `train()` (what
`dllm-peft train --method trajectory` runs), one on `builtin:uppercase` and one on `builtin:reverse`; they are
composed (`compose_from_files`), the router is trained to recognise the task on labelled, mixed, EOS-padded
batches (`train_router`), and the composition samples the test prompts of both tasks. Reported:
  * the router weights while sampling: per task, the mean weight of each adapter at the first denoising step (the
    instruction alone, Algorithm 1's Enc(c)) and over all steps;
  * the test loss at fixed noise levels of the base, of each adapter alone and of the composition, per task — the
    composition should come close to the specialist on each task without being told the task;
  * exact-match accuracy of the same four models on the test prompts (meaningful once the default model is a trained
    one; on random weights every answer is wrong).
One torch thread (the machine is shared). `--quick` trains 30 steps instead of 300 (adapters and router) on 32
examples per task and tests 8 prompts per task: the same schema, for a smoke run; its figures say little.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # runs_file.py

from runs_file import write_run  # noqa: E402  (benchmarks/runs_file.py)

from dllm_peft.adapters.files import load_adapter  # noqa: E402
from dllm_peft.adapters.router import recorded_router_weights  # noqa: E402
from dllm_peft.config import DEFAULT_MODEL, SamplerConfig, TrainConfig  # noqa: E402
from dllm_peft.data.records import collate, prompt_response_pairs, tokenize_pairs  # noqa: E402
from dllm_peft.data.tasks import task_records  # noqa: E402
from dllm_peft.diffusion.loss import masked_diffusion_loss  # noqa: E402
from dllm_peft.diffusion.sampler import sample  # noqa: E402
from dllm_peft.diffusion.schedule import mask_counts_at  # noqa: E402
from dllm_peft.models import load_backbone  # noqa: E402
from dllm_peft.training.router import compose_from_files, router_batch, train_router  # noqa: E402
from dllm_peft.training.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "trajectory_router.json"
TASKS = ("uppercase", "reverse")
LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
# Per mode: steps of each adapter and of the router, router examples per task, test prompts per task.
SIZES = {
    "full": {"adapter_steps": 300, "router_steps": 300, "router_examples": 256, "test_prompts": 32},
    "quick": {"adapter_steps": 30, "router_steps": 30, "router_examples": 32, "test_prompts": 8},
}


def examples(backbone, task: str, split: str, count: int):
    return tokenize_pairs(prompt_response_pairs(task_records(task, split, count)), backbone, 128)[0]


def labelled_batches(backbone, count: int, per_task: int, response_length: int) -> list:
    """Router batches of `per_task` examples of each task, shaped like the sampler's canvas (`router_batch`)."""
    pools = [examples(backbone, task, "train", count) for task in TASKS]
    return [
        router_batch([pool[start : start + per_task] for pool in pools], response_length, backbone.eos_id)
        for start in range(0, count, per_task)
    ]


def test_loss(backbone, task: str, count: int) -> float:
    """Mean masked-diffusion loss over the fixed noise levels on the task's test split."""
    batch = collate(examples(backbone, task, "test", count), backbone.eos_id)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [
            masked_diffusion_loss(
                backbone, batch.input_ids, batch.response_mask, None, generator,
                mask_counts_at(level, batch.response_mask.sum(dim=1)),
            ).loss.item()
            for level in LEVELS
        ]  # fmt: skip
    return sum(losses) / len(losses)


def sampled(backbone, task: str, count: int, settings: SamplerConfig, routed: bool) -> tuple[float, list]:
    """Exact-match accuracy on the task's test prompts, and (`routed`) the router weights of every step."""
    records = task_records(task, "test", count)
    prompts = [backbone.encode(record["prompt"]) for record in records]
    recording = recorded_router_weights(backbone.model) if routed else contextlib.nullcontext([])
    with torch.no_grad(), recording as weights:
        result = sample(backbone, prompts, settings, torch.Generator().manual_seed(0))
    correct = sum(backbone.decode(tokens).strip() == record["answer"] for tokens, record in zip(result.tokens, records))
    return correct / len(records), weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--adapter-steps", type=int, help="default: 300 (30 with --quick)")
    parser.add_argument("--adapter-lr", type=float, default=1e-2)
    parser.add_argument("--router-steps", type=int, help="default: 300 (30 with --quick)")
    parser.add_argument("--router-lr", type=float, default=3e-3)
    parser.add_argument("--router-examples", type=int, help="router training examples per task; default: 256 (32)")
    parser.add_argument("--test-prompts", type=int, help="test prompts per task; default: 32 (8 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, 8 test prompts per task")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write (runs of other models kept)")
    args = parser.parse_args()
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    for name, value in SIZES[mode].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    torch.set_num_threads(1)
    settings = SamplerConfig(gen_length=16, steps=16, block_length=16)

    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for task in TASKS:
            output = Path(scratch) / task
            config = TrainConfig(
                method="trajectory", model=args.model, data=f"builtin:{task}", max_steps=args.adapter_steps,
                lr=args.adapter_lr, output=str(output), seed=0,
            )  # fmt: skip
            train(config)
            paths.append(output)

        models = {"base": load_backbone(args.model, dtype="float32", device="cpu")}
        for task, path in zip(TASKS, paths):
            models[f"{task} adapter"] = load_backbone(args.model, dtype="float32", device="cpu")
            load_adapter(models[f"{task} adapter"], path)
        composed = load_backbone(args.model, dtype="float32", device="cpu")
        compose_from_files(composed, paths)
        batches = labelled_batches(composed, args.router_examples, per_task=4, response_length=settings.gen_length)
        generator = torch.Generator().manual_seed(1)
        router_losses = train_router(composed, itertools.cycle(batches), args.router_steps, args.router_lr, generator)
        models["composition"] = composed

        losses = {}
        for name, model in models.items():
            losses[name] = {task: test_loss(model, task, args.test_prompts) for task in TASKS}
        accuracy, router = {}, {}
        for name, backbone in models.items():
            accuracy[name] = {}
            for task in TASKS:
                routed = name == "composition"
                accuracy[name][task], weights = sampled(backbone, task, args.test_prompts, settings, routed)
                if weights:
                    steps = torch.stack(weights).float()  # (steps, prompts, tasks)
                    router[task] = {
                        "first_step": dict(zip(TASKS, steps[0].mean(dim=0).tolist())),
                        "all_steps": dict(zip(TASKS, steps.mean(dim=(0, 1)).tolist())),
                        "share_of_prompts_routed_to_own_task": (steps.mean(dim=0).argmax(dim=1) == TASKS.index(task))
                        .float().mean().item(),
                    }  # fmt: skip

    record = {
        "command": " ".join(["python", "benchmarks/trajectory_router/run.py", *sys.argv[1:]]),
        "mode": mode,
        "model": args.model,
        "adapter_training": {"steps": args.adapter_steps, "lr": args.adapter_lr, "method": "trajectory"},
        "router_training": {
            "steps": args.router_steps, "lr": args.router_lr, "examples_per_task": args.router_examples,
            "first_loss": router_losses[0], "mean_loss_last_10": sum(router_losses[-10:]) / 10,
        },  # fmt: skip
        "sampler": {"gen_length": settings.gen_length, "steps": settings.steps, "block_length": settings.block_length},
        "router_weights_while_sampling": router,
        "test_loss_at_fixed_levels": losses,
        "exact_match": accuracy,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_run(args.output, args.model, record)
    print(json.dumps({"router_weights_while_sampling": router, "test_loss_at_fixed_levels": losses}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
