"""GPU benchmark at LLaDA-8B shapes: `python benchmarks/gpu/run.py [--tiny] [--output PATH]` → `results/gpu.json`.

One script for one GPU (sized for ≤ 8 minutes on one H200), so that the day a GPU is lent it runs the first time:
  * model: LLaDA-8B-Instruct's architecture written in code (`llada_8b_config`, the fields of its config.json), random
    weights in bf16 -- nothing is downloaded; speed and memory do not depend on the weights;
  * adapters: NaRA and LoRA at rank 32 on q_proj, k_proj, v_proj, attn_out (the NaRA recipes), dropout 0.05, kept in
    float32 as `dllm-peft train` keeps them, bf16 autocast as `--precision auto` on a GPU;
  * training: the step of `dllm-peft train` (masked-diffusion loss, backward, clip 1.0, AdamW) at sequence 512 and
    1024, with and without gradient checkpointing: tokens/s, peak memory, MFU (model FLOPs of `benchmarks/flops.py`
    ÷ step time ÷ peak) against the bf16 matrix-product peak measured in this run and against the datasheet figure;
  * sampling at gen 256: the exact sampler, threshold 0.9, threshold 0.9 + dual cache: tokens/s and MFU;
  * Monte-Carlo likelihood (`log_likelihoods`): requests/s;
  * a one-process FSDP2 step (`dllm_peft.training.sharding.shard`, NCCL): it runs and its loss is finite.
Every figure comes with its NaRA/LoRA ratio. A section that fails records its error and the next one runs; the JSON
is rewritten after every section, so a run cut short still leaves what it measured.

`--tiny` runs the same code on the CPU at a tiny shape in seconds (`tests/test_gpu_script.py`); its figures mean
nothing. Settings of the full run: `benchmarks/gpu/README.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.flops import FlopMeter, lora, matmul_peak, nara, shape_of, training_step_flops  # noqa: E402
from dllm_peft.adapters.base import adapter_state_dict, inject, trainable_parameters, unload  # noqa: E402
from dllm_peft.adapters.registry import build_adapter_config, get_method  # noqa: E402
from dllm_peft.atomic import atomic_write_bytes  # noqa: E402
from dllm_peft.config import SamplerConfig  # noqa: E402
from dllm_peft.diffusion.conditioning import enable_gradient_checkpointing  # noqa: E402
from dllm_peft.diffusion.likelihood import log_likelihoods  # noqa: E402
from dllm_peft.diffusion.loss import masked_diffusion_loss  # noqa: E402
from dllm_peft.diffusion.sampler import sample  # noqa: E402
from dllm_peft.models.backbone import Backbone  # noqa: E402
from dllm_peft.models.llada import LLADA_TARGETS, LLaDAConfig, LLaDAModelLM, tiny_llada_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
METHODS = ("lora", "nara")
RANK = 32
H200_SXM_BF16_DENSE = 989e12  # NVIDIA H200 SXM datasheet: 989 TFLOPS bf16 Tensor Core, dense (1979 with sparsity)
LLADA_EOT = 126348

PLANS = {
    "full": dict(device="cuda", lengths={512: 4, 1024: 2}, warmup=2, steps=5, gen_length=256, block_length=32,
                 sampler_prompts=4, prompt_length=64, likelihood_requests=16, answer_length=16, mc_num=32,
                 likelihood_batch=32, peak_size=8192, peak_seconds=2.0, budget_seconds=440),
    "tiny": dict(device="cpu", lengths={32: 2, 64: 1}, warmup=1, steps=2, gen_length=16, block_length=8,
                 sampler_prompts=2, prompt_length=8, likelihood_requests=3, answer_length=4, mc_num=4,
                 likelihood_batch=8, peak_size=256, peak_seconds=0.2, budget_seconds=120),
}


def llada_8b_config() -> LLaDAConfig:
    """GSAI-ML/LLaDA-8B-Instruct's config.json, the fields that shape the model (method-facts.md)."""
    return LLaDAConfig(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                       activation_type="silu", block_type="llama", rope=True, rope_theta=500000.0,
                       layer_norm_type="rms", rms_norm_eps=1e-5, include_bias=False, weight_tying=False,
                       vocab_size=126464, embedding_size=126464, mask_token_id=126336, eos_token_id=126081,
                       pad_token_id=126081, max_sequence_length=4096)


def build_backbone(tiny: bool, device: torch.device) -> Backbone:
    """The random-weight bf16 model on `device`, created there directly (no float32 copy of 8 B parameters)."""
    config = tiny_llada_config() if tiny else llada_8b_config()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LLaDAModelLM(config).eval()
    finally:
        torch.set_default_dtype(default)  # adapters are created in float32, as `dllm-peft train` makes them
    eot = None if tiny else LLADA_EOT
    return Backbone(model=model, tokenizer=types.SimpleNamespace(eot_token_id=eot), mask_id=config.mask_token_id,
                    eos_id=config.eos_token_id, name="llada-8b-random" if not tiny else "tiny-llada-random",
                    default_targets=LLADA_TARGETS, max_length=config.max_sequence_length)


@contextlib.contextmanager
def adapter(backbone: Backbone, method: str, checkpointing: bool = False, train: bool = False):
    """`method` injected (randomised a little, so NaRA's core is not the identity), removed again on exit."""
    config = build_adapter_config(method, rank=RANK, dropout=0.05 if train else 0.0, target_modules=LLADA_TARGETS)
    model = backbone.model
    inject(model, config, get_method(method).layer_class, backbone.default_targets)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in adapter_state_dict(model).items():
            if tensor.is_floating_point() and not name.endswith("frequencies"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.01)
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train(train)
    try:
        yield model
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
        unload(model)
        model.eval()


class Clock:
    """Wall seconds, with the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def random_ids(backbone: Backbone, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Token ids below the mask id (random weights: any ids do)."""
    high = min(backbone.mask_id, backbone.eos_id)
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def measure_training(backbone: Backbone, plan: dict, device: torch.device, peaks: dict) -> list[dict]:
    shape = shape_of(backbone.model.config)
    clock, rows = Clock(device), []
    for length, batch in plan["lengths"].items():
        ids = random_ids(backbone, (batch, length), seed=length).to(device)
        response = torch.zeros_like(ids, dtype=torch.bool)
        response[:, length // 8 :] = True  # a short prompt, the rest answer (EOS padding counts as answer)
        for checkpointing in (False, True):
            for method in METHODS:
                reset_memory(device)
                with adapter(backbone, method, checkpointing, train=True) as model:
                    parameters = trainable_parameters(model)
                    optimizer = torch.optim.AdamW(parameters, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
                    seconds = []
                    for step in range(plan["warmup"] + plan["steps"]):
                        generator = torch.Generator().manual_seed(step)
                        began = clock()
                        with autocast(device):
                            loss = masked_diffusion_loss(backbone, ids, response, generator=generator).loss
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        seconds.append(clock() - began)
                    del optimizer
                step_seconds = statistics.median(seconds[plan["warmup"] :])
                flops = training_step_flops(shape, length, lora(RANK) if method == "lora" else nara(RANK), batch=batch,
                                            recompute=checkpointing)
                model_flops = flops["total"] - flops["recompute"]
                rows.append({
                    "method": method, "sequence": length, "batch": batch, "gradient_checkpointing": checkpointing,
                    "step_seconds": step_seconds, "tokens_per_second": batch * length / step_seconds,
                    "peak_memory_gb": peak_memory_gb(device), "loss_finite": bool(math.isfinite(float(loss))),
                    "model_flops_per_step": model_flops, "hardware_flops_per_step": flops["total"],
                    **utilisation(model_flops / step_seconds, peaks),
                })
    return rows


def utilisation(achieved: float, peaks: dict) -> dict:
    out = {"achieved_flops_per_second": achieved, "mfu_vs_measured_peak": achieved / peaks["measured"]}
    if peaks.get("datasheet"):
        out["mfu_vs_datasheet_peak"] = achieved / peaks["datasheet"]
    return out


def measure_sampler(backbone: Backbone, plan: dict, device: torch.device, peaks: dict) -> list[dict]:
    gen, block = plan["gen_length"], plan["block_length"]
    variants = {
        "exact": SamplerConfig(gen_length=gen, steps=gen, block_length=block, stop_at_eos=False),
        "threshold 0.9": SamplerConfig(gen_length=gen, steps=gen, block_length=block, threshold=0.9, stop_at_eos=False),
        "threshold 0.9 + dual cache": SamplerConfig(gen_length=gen, steps=gen, block_length=block, threshold=0.9,
                                                    cache="dual", stop_at_eos=False),
    }
    prompts = random_ids(backbone, (plan["sampler_prompts"], plan["prompt_length"]), seed=7).tolist()
    shape, clock, rows = shape_of(backbone.model.config), Clock(device), []
    for method in METHODS:
        with adapter(backbone, method) as model:
            sample(backbone, prompts, SamplerConfig(gen_length=block, steps=block, block_length=block,
                                                    stop_at_eos=False))  # warm-up: kernels, NaRA's cores
            for name, settings in variants.items():
                reset_memory(device)
                with FlopMeter(model, shape, lora(RANK) if method == "lora" else nara(RANK)) as meter:
                    began = clock()
                    result = sample(backbone, prompts, settings, [torch.Generator().manual_seed(i)
                                                                   for i in range(len(prompts))])
                    seconds = clock() - began
                rows.append({
                    "method": method, "variant": name, "prompts": len(prompts), "gen_length": gen,
                    "block_length": block, "seconds": seconds, "tokens_per_second": len(prompts) * gen / seconds,
                    "mean_steps": statistics.mean(result.steps), "forward_passes": result.forward_passes,
                    "peak_memory_gb": peak_memory_gb(device), "flops": meter.flops,
                    **utilisation(meter.flops / seconds, peaks),
                })
    return rows


def measure_likelihood(backbone: Backbone, plan: dict, device: torch.device) -> list[dict]:
    count, clock, rows = plan["likelihood_requests"], Clock(device), []
    prompts = random_ids(backbone, (count, plan["prompt_length"]), seed=11).tolist()
    answers = random_ids(backbone, (count, plan["answer_length"]), seed=12).tolist()
    requests = list(zip(prompts, answers))
    for method in METHODS:
        with adapter(backbone, method):
            log_likelihoods(backbone, requests[:1], mc_num=plan["mc_num"], batch_size=plan["likelihood_batch"])
            reset_memory(device)
            began = clock()
            values = log_likelihoods(backbone, requests, mc_num=plan["mc_num"], batch_size=plan["likelihood_batch"])
            seconds = clock() - began
        rows.append({"method": method, "requests": count, "mc_num": plan["mc_num"], "seconds": seconds,
                     "requests_per_second": count / seconds, "peak_memory_gb": peak_memory_gb(device),
                     "all_finite": all(math.isfinite(v) for v in values)})
    return rows


def fsdp2_smoke(backbone: Backbone, plan: dict, device: torch.device) -> dict:
    """One NaRA training step on a one-process FSDP2 model (the model stays sharded: run this section last)."""
    import torch.distributed as dist

    from dllm_peft.training.sharding import clip_grad_norm, gather_root, shard

    with socket.socket() as probe:  # a free port for the one-process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        model = backbone.model
        inject(model, build_adapter_config("nara", rank=RANK, target_modules=LLADA_TARGETS),
               get_method("nara").layer_class, backbone.default_targets)
        units = shard(model, device)
        model.train()
        parameters = trainable_parameters(model)
        optimizer = torch.optim.AdamW(parameters, lr=1e-4)
        length = min(plan["lengths"])
        ids = random_ids(backbone, (1, length), seed=3).to(device)
        response = torch.ones_like(ids, dtype=torch.bool)
        reset_memory(device)
        clock = Clock(device)
        began = clock()
        gather_root(model)
        with autocast(device):
            loss = masked_diffusion_loss(backbone, ids, response, generator=torch.Generator().manual_seed(0)).loss
        loss.backward()
        norm = clip_grad_norm(parameters, 1.0)
        optimizer.step()
        seconds = clock() - began
        return {"processes": 1, "backend": dist.get_backend(), "units": units, "sequence": length,
                "loss": float(loss), "loss_finite": math.isfinite(float(loss)), "gradient_norm": norm,
                "step_seconds": seconds, "peak_memory_gb": peak_memory_gb(device)}
    finally:
        dist.destroy_process_group()


def nara_over_lora(rows: list[dict], keys: tuple[str, ...], figures: tuple[str, ...]) -> list[dict]:
    """For each setting (the values of `keys`), NaRA's figure over LoRA's."""
    by_setting: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_setting.setdefault(tuple(row[key] for key in keys), {})[row["method"]] = row
    ratios = []
    for setting, pair in by_setting.items():
        if set(pair) >= set(METHODS):
            entry = dict(zip(keys, setting))
            for figure in figures:
                a, b = pair["nara"].get(figure), pair["lora"].get(figure)
                entry[f"nara_over_lora_{figure}"] = a / b if a is not None and b else None
            ratios.append(entry)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, in seconds (the suite's test)")
    parser.add_argument("--output", type=Path, default=None, help=f"the JSON to write (default {RESULTS})")
    arguments = parser.parse_args()
    mode = "tiny" if arguments.tiny else "full"
    plan = PLANS[mode]
    output = arguments.output or (RESULTS if mode == "full" else ROOT / "benchmarks" / "results" / "quick" / "gpu.json")
    if plan["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu/run.py needs a CUDA device; run it with --tiny to check it on the CPU.")
    device = torch.device(plan["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    results: dict = {
        "command": " ".join(["python", "benchmarks/gpu/run.py", *sys.argv[1:]]),
        "mode": mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "plan": plan,
        "adapters": f"NaRA and LoRA, rank {RANK}, on {', '.join(LLADA_TARGETS)}; float32 adapter, bf16 base",
        "errors": {},
    }

    def save() -> None:
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_bytes(output, (json.dumps(results, indent=2) + "\n").encode())

    peak = matmul_peak(torch.bfloat16, device.type, plan["peak_size"], plan["peak_seconds"],
                       clock=Clock(device) if device.type == "cuda" else time.perf_counter)
    peaks = {"measured": peak["flops_per_second"],
             "datasheet": H200_SXM_BF16_DENSE if "H200" in results["device"] else None}
    results["peak"] = {"measured_bf16_flops_per_second": peaks["measured"], "measured_with": peak,
                       "datasheet_bf16_dense_flops_per_second": peaks["datasheet"],
                       "datasheet": "NVIDIA H200 SXM, 989 TFLOPS bf16 dense" if peaks["datasheet"] else None}
    backbone = build_backbone(mode == "tiny", device)
    results["model"] = {"config": {k: v for k, v in backbone.model.config.to_dict().items()
                                   if k in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                                            "vocab_size", "rope_theta", "max_sequence_length")},
                        "parameters": sum(p.numel() for p in backbone.model.parameters()), "dtype": "bfloat16"}
    save()
    sections = (
        ("training", lambda: measure_training(backbone, plan, device, peaks),
         (("sequence", "gradient_checkpointing"), ("tokens_per_second", "peak_memory_gb", "mfu_vs_measured_peak"))),
        ("sampler", lambda: measure_sampler(backbone, plan, device, peaks),
         (("variant",), ("tokens_per_second", "mean_steps", "mfu_vs_measured_peak"))),
        ("likelihood", lambda: measure_likelihood(backbone, plan, device),
         (("mc_num",), ("requests_per_second", "peak_memory_gb"))),
        ("fsdp2_smoke", lambda: fsdp2_smoke(backbone, plan, device), None),
    )
    for name, run, ratio_spec in sections:
        if time.perf_counter() - started > plan["budget_seconds"]:
            results["errors"][name] = f"skipped: the run passed its budget of {plan['budget_seconds']} s"
            continue
        try:
            results[name] = run()
            if ratio_spec is not None:
                results[f"{name}_ratios"] = nara_over_lora(results[name], *ratio_spec)
        except Exception as error:  # noqa: BLE001 - record it and go on: one broken section must not cost the rest
            results["errors"][name] = "".join(traceback.format_exception_only(error)).strip()
            traceback.print_exc()
        save()
    print(json.dumps({key: results.get(key) for key in ("training_ratios", "sampler_ratios", "likelihood_ratios",
                                                        "fsdp2_smoke", "errors", "wall_seconds")}, indent=2))


if __name__ == "__main__":
    main()
