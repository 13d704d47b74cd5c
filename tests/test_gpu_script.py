"""`benchmarks/gpu/run.py --tiny`: the GPU benchmark's whole code path on the CPU at a tiny shape, so that the day a
GPU is lent the full run works the first time. Its figures mean nothing; that every section ran and wrote them does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_every_section_on_the_cpu_at_a_tiny_shape(tmp_path):
    output = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run.py"), "--tiny", "--output",
                           str(output)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["mode"] == "tiny" and result["errors"] == {}
    assert result["peak"]["measured_bf16_flops_per_second"] > 0
    training = result["training"]
    assert {(row["method"], row["sequence"], row["gradient_checkpointing"]) for row in training} == {
        (method, length, checkpointing) for method in ("lora", "nara") for length in (32, 64)
        for checkpointing in (False, True)}
    assert all(row["loss_finite"] and 0 < row["mfu_vs_measured_peak"] for row in training)
    assert all(row["hardware_flops_per_step"] > row["model_flops_per_step"] for row in training
               if row["gradient_checkpointing"])
    assert {row["variant"] for row in result["sampler"]} == {"exact", "threshold 0.9", "threshold 0.9 + dual cache"}
    assert all(row["tokens_per_second"] > 0 and row["flops"] > 0 for row in result["sampler"])
    assert all(row["all_finite"] for row in result["likelihood"])
    assert result["fsdp2_smoke"]["loss_finite"] and result["fsdp2_smoke"]["backend"] == "gloo"
    for section, count in (("training", 4), ("sampler", 3), ("likelihood", 1)):
        ratios = result[f"{section}_ratios"]
        assert len(ratios) == count and all(
            value > 0 for entry in ratios for key, value in entry.items()
            if key.startswith("nara_over_lora") and value is not None)
