"""FSDP: 2 processes with the frozen base sharded continue a run exactly as 1 process × twice the grad-accum does.

The ranks get the environment `accelerate launch --use_fsdp` sets (ACCELERATE_USE_FSDP plus torch.distributed's
RANK, WORLD_SIZE, …); on CPU accelerate itself would fall back to MULTI_CPU, and dllm-peft shards the model with
FSDP2 either way (`dllm_peft/training/sharding.py`). One sharded launch covers the FSDP paths: it resumes the 1-process run's
step-2 checkpoint (each rank loads its shard of the adapter and of the AdamW moments), trains steps 3–4 with
--gradient-checkpointing (λ routing through the gathered root, NaRA's hypernetwork on it), validates (every rank runs
the same number of forwards), checkpoints (gathering from both ranks) and writes the final adapter.
`benchmarks/multiprocess_equivalence/run.py` runs a sharded run from step 0 through a real `accelerate launch`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dllm_peft.adapters.files import read_adapter
from dllm_peft.training.metrics import read_metrics

from .test_multiprocess import free_port, run_in_this_process

RUN = [
    *("train", "--method", "nara", "--rank", "4", "--batch-size", "2", "--max-steps", "4", "--lr", "0.01"),
    *("--dropout", "0.1", "--val-size", "8", "--eval-every", "2", "--save-every", "2"),
]
LOSS_TOLERANCE = 1e-5  # relative; only the order of floating-point sums differs (seen: 2.7e-8)
# Adapter tensors, relative to each tensor's largest entry: AdamW divides by √v, so rounding in near-zero gradient
# entries becomes a visible update (seen: 1.4e-6 here; 6.9e-5 over 4 sharded steps from step 0, in the
# hypernetwork's hidden layer, whose gradients start near zero because the layer after it starts at zero).
ADAPTER_TOLERANCE = 2e-4


def adapter_gap(left, right) -> float:
    (_, a), (_, b) = read_adapter(left), read_adapter(right)
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)) for k in b)


def test_fsdp_two_processes_resume_and_match_one_process(tmp_path):
    run_in_this_process([*RUN, "--grad-accum", "2", "--output", str(tmp_path / "one")])
    cut = tmp_path / "cut"  # the same run, as if killed after its step-2 checkpoint
    shutil.copytree(tmp_path / "one", cut)
    shutil.rmtree(cut / "checkpoints" / "step-4")
    for name in ("dllm_peft_adapter.json", "dllm_peft_adapter.safetensors"):
        (cut / name).unlink()

    rendezvous = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env = {**os.environ, **rendezvous, "MASTER_PORT": str(free_port()), "ACCELERATE_USE_FSDP": "true"}
    command = [
        sys.executable, "-m", "dllm_peft", *RUN, "--grad-accum", "1", "--gradient-checkpointing", "--resume",
        "--output", str(cut),
    ]
    ranks = [
        subprocess.Popen(
            command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-1500:] + outputs[1][1][-1500:]
    report = " ".join(outputs[0][1].split())
    assert "resuming from" in report and "step-2" in report and "2 processes, FSDP" in report

    one, sharded = read_metrics(tmp_path / "one", "train"), read_metrics(cut, "train")
    assert [r["examples_seen"] for r in sharded] == [r["examples_seen"] for r in one] == [4, 8, 12, 16]
    assert [r["loss"] for r in sharded] == pytest.approx([r["loss"] for r in one], rel=LOSS_TOLERANCE)
    mine, theirs = read_metrics(cut, "validation")[-1], read_metrics(tmp_path / "one", "validation")[-1]
    assert mine["step"] == theirs["step"] == 4
    assert mine["loss_by_noise_level"] == pytest.approx(theirs["loss_by_noise_level"], rel=LOSS_TOLERANCE)
    assert adapter_gap(cut / "checkpoints" / "step-4", tmp_path / "one" / "checkpoints" / "step-4") < ADAPTER_TOLERANCE
    assert adapter_gap(cut, tmp_path / "one") < ADAPTER_TOLERANCE
