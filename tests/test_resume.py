"""Resume: a run killed (SIGKILL) or stopped (Ctrl-C) and resumed ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dllm_peft.adapters.files import read_adapter
from dllm_peft.cli import main
from dllm_peft.training.checkpoint import checkpoint_steps
from dllm_peft.training.metrics import read_metrics

# Dropout on, several epochs of a small data set, validation and checkpoints on: every RNG the loop uses matters.
RUN = [
    *("train", "--method", "nara", "--rank", "4", "--batch-size", "4", "--max-steps", "16", "--lr", "0.01"),
    *("--dropout", "0.1", "--val-size", "4", "--eval-every", "8", "--save-every", "2", "--keep-checkpoints", "2"),
]



def run_in_process(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)


def start(output: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dllm_peft", *RUN, "--output", str(output)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(output: Path, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint_steps(output):
        if process.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {process.stderr.read()[-500:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the first checkpoint")
        time.sleep(0.005)


def assert_same_adapter(output: Path, reference: Path) -> None:
    _, tensors = read_adapter(output)
    _, expected = read_adapter(reference)
    assert set(tensors) == set(expected)
    different = [name for name in expected if not torch.equal(tensors[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:2]}"
    assert [r["loss"] for r in read_metrics(output, "train")] == [r["loss"] for r in read_metrics(reference, "train")]
    assert read_metrics(output, "validation") == read_metrics(reference, "validation")


def test_killed_or_stopped_runs_resume_bit_identical(tmp_path, monkeypatch, capsys):
    killed = start(tmp_path / "killed")  # it starts up while the reference runs here
    reference = tmp_path / "reference"
    run_in_process([*RUN, "--output", str(reference)])

    # Ctrl-C during step 3 (delivered by the real signal machinery): the step completes, is saved, exit status 130.
    def train_with_ctrl_c(settings, on_progress, on_report):
        def progress(update):
            on_progress(update)
            if update.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

        return real_train(settings, progress, on_report)

    training_loop = importlib.import_module("dllm_peft.training.train")  # the CLI imports it when a run starts
    real_train = training_loop.train
    monkeypatch.setattr(training_loop, "train", train_with_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--output", str(tmp_path / "stopped")])
    monkeypatch.undo()
    stderr = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 130 and checkpoint_steps(tmp_path / "stopped") == [2, 3]
    saved = tmp_path / "stopped" / "checkpoints" / "step-3"
    assert f"stopped after step 3: saved {saved}; continue with --resume" in stderr
    assert not (tmp_path / "stopped" / "dllm_peft_adapter.safetensors").exists()

    # SIGKILL as soon as a checkpoint is complete: no handler runs, the write of the next one may be cut short.
    wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and checkpoint_steps(tmp_path / "killed")[-1] < 16
    assert not (tmp_path / "killed" / "dllm_peft_adapter.safetensors").exists()  # no partial adapter

    # Resume both with nothing but --output and --resume: the saved settings are the run's.
    for output in (tmp_path / "killed", tmp_path / "stopped"):
        run_in_process(["train", "--output", str(output), "--resume"])
        assert_same_adapter(output, reference)
        assert not list((output / "checkpoints").glob(".step-*"))  # no leftovers of a write cut short
