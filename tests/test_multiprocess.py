"""Two processes × grad-accum g train exactly what one process × 2g trains (DDP through accelerate, gloo on CPU).

The two ranks are started here with the torch.distributed environment that `accelerate launch` / torchrun would set
(RANK, WORLD_SIZE, MASTER_ADDR, …), which saves the launcher's own start-up; `benchmarks/multiprocess_equivalence`
runs the same comparison through a real `accelerate launch`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from dllm_peft.adapters.files import read_adapter
from dllm_peft.cli import main
from dllm_peft.training.metrics import read_metrics

RUN = [
    *("train", "--method", "nara", "--rank", "4", "--batch-size", "2", "--max-steps", "4", "--lr", "0.01"),
    *("--dropout", "0.1", "--val-size", "8", "--eval-every", "2", "--save-every", "0"),
]
TOLERANCE = 1e-5  # relative; only the order of the floating-point sums differs (seen: ~1e-7)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_in_this_process(args: list[str]) -> None:
    """`dllm-peft ARGS` as one process (conftest keeps torch at one thread), asserting it succeeded."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)


def test_two_processes_match_one_process_with_twice_the_accumulation(tmp_path):
    rendezvous = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env = {**os.environ, **rendezvous, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dllm_peft", *RUN, "--grad-accum", "1", "--output", str(tmp_path / "two")]
    ranks = [
        subprocess.Popen(
            command,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    run_in_this_process([*RUN, "--grad-accum", "2", "--output", str(tmp_path / "one")])
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-800:] + outputs[1][1][-800:]
    assert "2 processes" in " ".join(outputs[0][1].split())  # rank 0 reports; rank 1 stays silent
    assert outputs[1][0] == "" and "validation" not in outputs[1][1]

    one, two = read_metrics(tmp_path / "one", "train"), read_metrics(tmp_path / "two", "train")
    assert [r["examples_seen"] for r in two] == [r["examples_seen"] for r in one] == [4, 8, 12, 16]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=TOLERANCE)
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    for mine, theirs in zip(read_metrics(tmp_path / "two", "validation"), read_metrics(tmp_path / "one", "validation")):
        assert mine["loss_by_noise_level"] == pytest.approx(theirs["loss_by_noise_level"], rel=TOLERANCE)
    (_, a), (_, b) = read_adapter(tmp_path / "two"), read_adapter(tmp_path / "one")
    assert all(torch.allclose(a[name], b[name], rtol=TOLERANCE, atol=1e-7) for name in b)
