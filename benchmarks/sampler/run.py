"""Sampler benchmark: `python benchmarks/sampler/run.py [--quick] [--output PATH]` → `benchmarks/results/sampler.json`.

Measures, all within one run and on one thread (the machine is shared; one thread keeps the ratios stable):
  1. `reference`: tokens/s of our sampler vs the plain reference loop of `tests/llada_reference.py` at identical
     settings (goal ≥ 1.0), after checking that both give the same canvas;
  2. `fast`: tokens/s of threshold decoding + KV cache vs that reference (goal ≥ 4×), with the steps they used and
     how many answers equal the reference's;
  3. `nara_vs_lora`: sampling time with a NaRA adapter over that with a LoRA adapter of the same rank on the same
     model (goal ≤ 1.03), with NaRA's remembered cores (`warm`: every λ seen before, as from an evaluation's second
     batch on) and forgotten before each call (`cold`), and a second LoRA copy as the noise floor;
  4. `nara_cache_staleness`: what the KV cache costs NaRA (answers that change vs no cache; refresh policies);
  5. `mfu`: achieved FLOP/s of the exact sampler with a rank-32 LoRA (FLOPs of every forward it ran, counted by
     `benchmarks/flops.py`) over the best float32 matrix-product rate measured on this thread, with this clock, in
     this run; on dllm-tiny and a random LLaDA with d_model 1024 (and, in full mode, the d_model 192 and 768 ones);
  6. `accuracy`: the default NaRA adapter trained here on the default task (`dllm-peft train --method nara`,
     seed 0), scored on its test prompts by `dllm_peft.evaluation.evaluate` (what `dllm-peft eval` runs) with the default
     sampler and with the fast settings: exact match, the drop in points (goal ≤ 1) and the speedup of the evals.
Timings use the CPU time of this thread (`time.thread_time`: time the process waits for a core on the shared machine
is not counted), interleave the variants call by call and repeat them (5 times, 9 for `nara_vs_lora`, whose goal is
within 3 %), turning their order each repeat; a call's time is its minimum over the repeats, and a variant's time is
the sum over its calls.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.adapters.base import inject  # noqa: E402
from dllm_peft.adapters.files import atomic_write_bytes  # noqa: E402
from dllm_peft.adapters.registry import build_adapter_config, get_method  # noqa: E402
from dllm_peft.config import DEFAULT_DATA, EvalConfig, SamplerConfig, TrainConfig  # noqa: E402
from dllm_peft.data.tasks import task_records  # noqa: E402
from dllm_peft.diffusion.conditioning import find_router  # noqa: E402
from dllm_peft.diffusion.sampler import sample  # noqa: E402
from dllm_peft.errors import DllmPeftError  # noqa: E402
from dllm_peft.evaluation.evaluate import evaluate  # noqa: E402
from dllm_peft.models import load_backbone, tiny_llada  # noqa: E402
from dllm_peft.training.train import train  # noqa: E402
from tests.conftest import randomize_adapter  # noqa: E402
from tests.llada_reference import reference_generate  # noqa: E402

from benchmarks.flops import FlopMeter, lora, matmul_peak, shape_of  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sampler.json"
PREFERRED_MODEL = "dllm-tiny"  # the trained default model, once it ships; tiny-llada (random) until then
DEFAULT_TASK = DEFAULT_DATA.removeprefix("builtin:")
MODES = {
    "full": dict(prompts=8, repeats=5, nara_repeats=9, train_steps=600, accuracy_limit=None, accuracy_repeats=3, wide_models=True),
    "quick": dict(prompts=3, repeats=2, nara_repeats=2, train_steps=100, accuracy_limit=64, accuracy_repeats=1, wide_models=False),
}
# Random LLaDAs for NaRA vs LoRA timing (speed does not depend on the weights): a narrow one, and a wider one where
# the adapter is a smaller share of the work, as in real models (run shorter: 4 prompts, 16 steps).
BATCH_SETTINGS = SamplerConfig(gen_length=64, steps=64, block_length=16, stop_at_eos=False)
TIMING_MODELS = {
    "d_model 192": (dict(d_model=192, n_heads=3, n_kv_heads=3, n_layers=4, mlp_hidden_size=512), 8, BATCH_SETTINGS),
    "d_model 768": (
        dict(d_model=768, n_heads=12, n_kv_heads=12, n_layers=4, mlp_hidden_size=2048),
        4,
        SamplerConfig(gen_length=32, steps=16, block_length=16, stop_at_eos=False),
    ),
}


def timed(function) -> tuple[float, object]:
    """CPU seconds of this thread (torch runs on this one thread) and the value of `function()`."""
    started = time.thread_time()
    value = function()
    return time.thread_time() - started, value


def interleaved(variants: dict[str, list], repeats: int) -> dict[str, float]:
    """Seconds of each variant: the sum over its calls of each call's minimum over `repeats`.

    Args:
        variants: name → list of calls; call i of every variant runs next to call i of the others, so a change of
            load on the shared machine hits all variants alike; the order of the variants turns by one each repeat.
    """
    calls = len(next(iter(variants.values())))
    names = list(variants)
    best = {name: [float("inf")] * calls for name in variants}
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]  # no variant always runs first or last
        for index in range(calls):
            for name in order:
                best[name][index] = min(best[name][index], timed(variants[name][index])[0])
    return {name: sum(values) for name, values in best.items()}


def reference_calls(backbone, prompts, settings: SamplerConfig, seed: int) -> list:
    return [
        lambda index=index, prompt=prompt: reference_generate(
            backbone, prompt, settings.gen_length, settings.steps, settings.block_length, settings.temperature,
            settings.cfg_scale, settings.remasking, torch.Generator().manual_seed(seed + index))
        for index, prompt in enumerate(prompts)
    ]


def our_calls(backbone, prompts, settings: SamplerConfig, seed: int) -> list:
    """One prompt at a time, like the reference loop, each with its own seeded generator."""
    return [
        lambda index=index, prompt=prompt: sample(
            backbone, [prompt], settings, torch.Generator().manual_seed(seed + index))
        for index, prompt in enumerate(prompts)
    ]


def run_reference(backbone, prompts, settings: SamplerConfig, seed: int) -> list[torch.Tensor]:
    return [call() for call in reference_calls(backbone, prompts, settings, seed)]


def run_ours(backbone, prompts, settings: SamplerConfig, seed: int):
    return [call() for call in our_calls(backbone, prompts, settings, seed)]


def response_text(backbone, canvas: torch.Tensor, gen_length: int) -> str:
    ids = canvas[0, -gen_length:].tolist()
    cut = ids.index(backbone.eos_id) if backbone.eos_id in ids else len(ids)
    return backbone.decode(ids[:cut])


def measure_reference(backbone, prompts, settings: SamplerConfig, repeats: int, seed: int) -> dict:
    exact = dataclasses.replace(settings, stop_at_eos=False)
    reference = run_reference(backbone, prompts, settings, seed)
    ours = run_ours(backbone, prompts, exact, seed)
    identical = all(torch.equal(r, o.canvas) for r, o in zip(reference, ours))
    seconds = interleaved({
        "reference": reference_calls(backbone, prompts, settings, seed),
        "ours": our_calls(backbone, prompts, exact, seed),
        "ours_stop_at_eos": our_calls(backbone, prompts, settings, seed),
    }, repeats)
    tokens = len(prompts) * settings.gen_length
    speed = {name: tokens / value for name, value in seconds.items()}
    return {
        "settings": dataclasses.asdict(settings),
        "canvases_identical_to_reference": identical,
        "tokens_per_second": {name: round(value, 1) for name, value in speed.items()},
        "ratio_ours_vs_reference": round(speed["ours"] / speed["reference"], 3),
        "ratio_ours_stop_at_eos_vs_reference": round(speed["ours_stop_at_eos"] / speed["reference"], 3),
        "goal": "ratio_ours_vs_reference >= 1.0",
    }


def measure_fast(backbone, prompts, settings: SamplerConfig, threshold: float, bound: float, repeats: int,
                 seed: int) -> dict:
    reference_texts = [response_text(backbone, c, settings.gen_length)
                       for c in run_reference(backbone, prompts, settings, seed)]
    variants = {
        "threshold": dataclasses.replace(settings, threshold=threshold),
        "threshold+prefix": dataclasses.replace(settings, threshold=threshold, cache="prefix"),
        "threshold+dual": dataclasses.replace(settings, threshold=threshold, cache="dual"),
        "entropy_bound+dual": dataclasses.replace(settings, entropy_bound=bound, cache="dual"),
    }
    report: dict = {"reference_settings": dataclasses.asdict(settings), "threshold": threshold,
                    "entropy_bound": bound, "variants": {}}
    calls = {"reference": reference_calls(backbone, prompts, settings, seed)}
    calls.update({name: our_calls(backbone, prompts, variant, seed) for name, variant in variants.items()})
    seconds = interleaved(calls, repeats)
    for name, variant in variants.items():
        results = run_ours(backbone, prompts, variant, seed)
        texts = [backbone.decode(result.tokens[0]) for result in results]
        report["variants"][name] = {
            "speedup_vs_reference": round(seconds["reference"] / seconds[name], 2),
            "mean_steps": statistics.mean(result.steps[0] for result in results),
            "reference_steps": settings.steps,
            "answers_equal_to_reference": f"{sum(a == b for a, b in zip(texts, reference_texts))}/{len(texts)}",
        }
    report["goal"] = "speedup_vs_reference of threshold+cache >= 4"
    return report


def adapted(backbone_factory, method: str, rank: int):
    backbone = backbone_factory()
    config = build_adapter_config(method, rank=rank, dropout=0.0)
    inject(backbone.model, config, get_method(method).layer_class, backbone.default_targets)
    randomize_adapter(backbone.model, seed=1, scale=0.05)  # nonzero B and hypernetwork: NaRA's core is really used
    backbone.model.eval()
    return backbone


def forget_cores(backbone) -> None:
    """Drop NaRA's remembered cores C(λ), so the next calls pay for the hypernetwork again."""
    for module in find_router(backbone.model).shared.values():
        module.forget()


@contextlib.contextmanager
def unfolded(backbone):
    """NaRA's layers compute B (C (A x)) inside the block, as in training, instead of (B · C) (A x)."""
    layers = [module for module in backbone.model.modules() if hasattr(module, "fold_at_inference")]
    for layer in layers:
        layer.fold_at_inference = False
    try:
        yield
    finally:
        for layer in layers:
            del layer.fold_at_inference  # the class's value again


def measure_nara_vs_lora(name: str, backbone_factory, prompts_text, settings: SamplerConfig, repeats: int) -> dict:
    """Rank-32 NaRA vs rank-32 LoRA, prompt by prompt (short calls interleave finely, so load hits both alike)."""
    lora, lora_copy, nara = (adapted(backbone_factory, method, 32) for method in ("lora", "lora", "nara"))

    def calls(backbone, before=lambda: None):
        return [lambda ids=backbone.encode(text), index=index: (before(), sample(
            backbone, [ids], settings, torch.Generator().manual_seed(index))) for index, text in enumerate(prompts_text)]

    folded = [result.canvas for _, result in (call() for call in calls(nara))]  # also warms: every λ seen once
    with unfolded(nara):
        identical = all(torch.equal(canvas, result.canvas) for canvas, (_, result) in zip(folded, (
            call() for call in calls(nara))))
    seconds = interleaved({"lora": calls(lora), "lora_copy": calls(lora_copy), "nara_warm": calls(nara),
                           "nara_cold": calls(nara, lambda: forget_cores(nara))}, repeats)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in lora.model.parameters() if not p.requires_grad),
        "settings": f"gen {settings.gen_length}, steps {settings.steps}, block {settings.block_length}",
        "prompts": len(prompts_text),
        "seconds": {key: round(value, 4) for key, value in seconds.items()},
        "ratio_nara_vs_lora": round(seconds["nara_warm"] / seconds["lora"], 3),
        "ratio_nara_cold_vs_lora": round(seconds["nara_cold"] / seconds["lora"], 3),
        "ratio_lora_copy_vs_lora": round(seconds["lora_copy"] / seconds["lora"], 3),
        "nara_canvases_identical_to_unfolded": identical,
        "goal": "ratio_nara_vs_lora <= 1.03 (ratio_lora_copy_vs_lora: the same adapter twice, the noise floor), "
                "with NaRA's canvases identical to those of B (C (A x)) without the fold",
    }


MFU_MODELS = {
    "d_model 1024": (dict(d_model=1024, n_heads=16, n_kv_heads=16, n_layers=4, mlp_hidden_size=2752), 2,
                     SamplerConfig(gen_length=32, steps=16, block_length=16, stop_at_eos=False)),
}


def measure_mfu(name: str, backbone_factory, prompts_text, settings: SamplerConfig, repeats: int) -> dict:
    """FLOPs of the exact sampler's forwards (rank-32 LoRA) per CPU second of this thread, ÷ this thread's mm peak."""
    backbone = adapted(backbone_factory, "lora", 32)
    shape = shape_of(backbone.model.config)
    calls = [lambda ids=backbone.encode(text), index=index: sample(
        backbone, [ids], settings, torch.Generator().manual_seed(index)) for index, text in enumerate(prompts_text)]
    with FlopMeter(backbone.model, shape, lora(32)) as meter:
        for call in calls:
            call()
    seconds = interleaved({"lora": calls}, repeats)["lora"]
    peak = matmul_peak(torch.float32, clock=time.thread_time)["flops_per_second"]
    achieved = meter.flops / seconds
    tokens = len(prompts_text) * settings.gen_length
    return {
        "model": name,
        "parameters": sum(p.numel() for p in backbone.model.parameters() if not p.requires_grad),
        "settings": f"gen {settings.gen_length}, steps {settings.steps}, block {settings.block_length}, no cache",
        "prompts": len(prompts_text),
        "forward_passes": meter.calls,
        "flops": meter.flops,
        "flops_per_generated_token": meter.flops / tokens,
        "seconds": round(seconds, 4),
        "achieved_flops_per_second": achieved,
        "peak_flops_per_second": peak,
        "mfu": round(achieved / peak, 4),
    }


def measure_cache_staleness(backbone_factory, prompts_text, settings: SamplerConfig, threshold: float,
                            repeats: int) -> dict:
    """How often the cache changes an answer, LoRA vs NaRA, and what refreshing costs and buys back."""
    report = {}
    for method in ("lora", "nara"):
        backbone = adapted(backbone_factory, method, 32)
        prompts = [backbone.encode(text) for text in prompts_text]
        base = dataclasses.replace(settings, threshold=threshold)
        plain = sample(backbone, prompts, base, [torch.Generator().manual_seed(i) for i in range(len(prompts))])
        variants = {f"dual_refresh_{n}": dataclasses.replace(base, cache="dual", cache_refresh=n) for n in (0, 4, 2, 1)}
        variants["none"] = base
        seconds = interleaved({
            name: [lambda variant=variant: sample(backbone, prompts, variant,
                                                  [torch.Generator().manual_seed(i) for i in range(len(prompts))])]
            for name, variant in variants.items()
        }, repeats)
        rows = {}
        for name, variant in variants.items():
            result = sample(backbone, prompts, variant, [torch.Generator().manual_seed(i) for i in range(len(prompts))])
            changed = sum(a != b for a, b in zip(result.tokens, plain.tokens))
            positions = sum(
                int((result.canvas[i, result.prompt_length:] != plain.canvas[i, plain.prompt_length:]).sum())
                for i in range(len(prompts))
            )
            rows[name] = {
                "answers_changed_vs_no_cache": f"{changed}/{len(prompts)}",
                "response_positions_changed": f"{positions}/{len(prompts) * settings.gen_length}",
                "forward_passes": result.forward_passes,
                "time_vs_no_cache": round(seconds[name] / seconds["none"], 3),
            }
        report[method] = rows
    return report


FAST_SETTINGS = {  # name → sampler flags on top of what `dllm-peft eval` uses by default
    "default": {},
    "threshold": {"cache": "none"},
    "threshold+prefix": {"cache": "prefix"},
    "threshold+dual": {"cache": "dual"},
    "threshold+dual, refresh every 2 steps": {"cache": "dual", "cache_refresh": 2},
}


def measure_accuracy(train_steps: int, limit: int | None, repeats: int, threshold: float) -> dict:
    """Train the default NaRA adapter (seed 0), then score it with each sampler setting through `evaluate`."""
    with tempfile.TemporaryDirectory() as directory:
        output = str(Path(directory) / "adapter")
        train_seconds, result = timed(lambda: train(TrainConfig(method="nara", output=output, max_steps=train_steps,
                                                                seed=0)))
        configs = {
            name: EvalConfig(adapter=output, compare_base=False, limit=limit, device="cpu",
                             sampler={} if name == "default" else {"threshold": threshold, **flags})
            for name, flags in FAST_SETTINGS.items()
        }
        scores: dict[str, dict] = {}

        def run(name):
            score = evaluate(configs[name]).runs["adapter"][DEFAULT_TASK]
            scores.setdefault(name, {"exact_match": round(100 * score.value, 2), "documents": score.documents})
            assert scores[name]["exact_match"] == round(100 * score.value, 2), "evaluation is not deterministic"

        seconds = interleaved({name: [lambda name=name: run(name)] for name in configs}, repeats)
    default = scores["default"]["exact_match"]
    for name, row in scores.items():
        row["drop_points"] = round(default - row["exact_match"], 2)
        row["eval_seconds"] = round(seconds[name], 2)
        row["speedup_vs_default"] = round(seconds["default"] / seconds[name], 2)
    fast = ("threshold+dual", "threshold+prefix")
    return {
        "task": DEFAULT_TASK,
        "adapter": f"dllm-peft train --method nara --max-steps {train_steps} --seed 0 (in process, 1 thread)",
        "train_seconds": round(train_seconds, 1),
        "train_loss_last_5": round(statistics.mean(result.losses[-5:]), 4),
        "evaluation": "dllm_peft.evaluation.evaluate (dllm-peft eval --adapter A --no-compare-base), default sampler "
                      "(gen 32 = one block, 32 steps); eval_seconds: the whole evaluate call",
        "settings": {name: configs[name].sampler for name in configs},
        "exact_match": scores,
        "max_drop_points_fast": max(scores[name]["drop_points"] for name in fast),
        "min_speedup_fast": min(scores[name]["speedup_vs_default"] for name in fast),
        "goal": "drop_points of threshold+dual and threshold+prefix <= 1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run (3 prompts, 2 repeats, dllm-tiny only, 100 training steps, 64 eval prompts)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    parser.add_argument("--model", default=None, help=f"default: {PREFERRED_MODEL} if available, else tiny-llada")
    parser.add_argument("--task", default="addition",
                        help="built-in task whose test prompts the timings use (dllm-tiny was pretrained on addition)")
    parser.add_argument("--wide-models", action="store_true",
                        help="with --quick: also NaRA vs LoRA and MFU on the random d_model 192 and 768 LLaDAs")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--entropy-bound", type=float, default=1.0)
    arguments = parser.parse_args()
    mode = "quick" if arguments.quick else "full"
    plan = dict(MODES[mode])
    plan["wide_models"] = plan["wide_models"] or arguments.wide_models
    torch.set_num_threads(1)
    torch.manual_seed(0)

    name = arguments.model
    if name is None:
        try:
            load_backbone(PREFERRED_MODEL)
            name = PREFERRED_MODEL
        except DllmPeftError:
            name = "tiny-llada"
    backbone = load_backbone(name, dtype="float32", device="cpu")
    trained = name != "tiny-llada"
    records = task_records(arguments.task, "test", plan["prompts"])
    prompts_text = [record["prompt"] for record in records]
    prompts = [backbone.encode(text) for text in prompts_text]
    repeats = plan["repeats"]

    default = SamplerConfig()
    blockwise = SamplerConfig(gen_length=64, steps=64, block_length=16)
    started = time.perf_counter()
    results = {
        "command": "python benchmarks/sampler/run.py " + " ".join(sys.argv[1:]),
        "mode": mode,
        "model": name,
        "model_is_trained": trained,
        "prompts": f"{plan['prompts']} prompts of builtin:{arguments.task} (test split), one at a time",
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread (shared machine)",
        "clock": "CPU time of the benchmark's thread (time.thread_time); minimum over repeats per call",
        "reference": measure_reference(backbone, prompts, default, repeats, seed=0),
        "reference_blockwise": measure_reference(backbone, prompts, blockwise, repeats, seed=0),
        "fast": measure_fast(backbone, prompts, blockwise, arguments.threshold, arguments.entropy_bound, repeats,
                             seed=0),
    }
    results["nara_vs_lora"] = [measure_nara_vs_lora(name, lambda: copy.deepcopy(backbone), prompts_text,
                                                    BATCH_SETTINGS, plan["nara_repeats"])]
    for label, (architecture, count, settings) in TIMING_MODELS.items() if plan["wide_models"] else ():
        results["nara_vs_lora"].append(measure_nara_vs_lora(
            f"random LLaDA, {label} {json.dumps(architecture)}", lambda a=architecture: tiny_llada(seed=0, **a),
            prompts_text[:count], settings, plan["nara_repeats"],
        ))
    results["nara_cache_staleness"] = measure_cache_staleness(
        lambda: copy.deepcopy(backbone), prompts_text, BATCH_SETTINGS, arguments.threshold, repeats,
    )
    results["mfu"] = {
        "peak": "best torch.mm rate of 1024 × 1024 float32 products on this thread (time.thread_time), measured after "
                "each model's timings",
        "flops": "benchmarks/flops.py via FlopMeter: matrix products of every forward the sampler ran, model FLOPs",
        "models": [measure_mfu(name, lambda: copy.deepcopy(backbone), prompts_text, BATCH_SETTINGS, repeats)],
    }
    wide = {**(TIMING_MODELS if plan["wide_models"] else {}), **MFU_MODELS}
    for label, (architecture, count, settings) in wide.items():
        results["mfu"]["models"].append(measure_mfu(
            f"random LLaDA, {label}", lambda a=architecture: tiny_llada(seed=0, **a), prompts_text[:count], settings,
            repeats))
    if trained:
        results["accuracy"] = measure_accuracy(plan["train_steps"], plan["accuracy_limit"], plan["accuracy_repeats"],
                                               arguments.threshold)
    else:
        results["accuracy"] = {"skipped": f"{name} has random weights; rerun once the trained default model ships"}
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_bytes(arguments.output, (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode())
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
