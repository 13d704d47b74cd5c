"""What a new user meets first (issue 19): lengths that follow each other, grep-able logs, readable files, devices
that fail in one sentence, replayable runs, no deprecation warning from our own model class."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dllm_peft.atomic import atomic_write_bytes, make_staging_dir
from dllm_peft.cli import main
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import resolve_device, tiny_llada
from dllm_peft.models.llada import output_cache

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_sample_block_length_and_steps_follow_the_generation_length(capsys):
    code, out, err = run(["sample", "--gen-length", "8", "--steps", "8", "--prompt", "hi"], capsys)
    assert code == 0, err
    assert "1 prompt(s), 8 steps each" in err


def test_a_typed_block_length_that_conflicts_is_one_sentence(capsys):
    code, _, err = run(["sample", "--gen-length", "8", "--block-length", "3", "--prompt", "hi"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --gen-length 8 is not divisible by --block-length 3; pass a --block-length that divides it, "
        "or leave it out (it then equals --gen-length)."
    ]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        staging = make_staging_dir(tmp_path, prefix=".x.", suffix=".tmp")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode
    assert stat.S_IMODE(staging.stat().st_mode) == dir_mode


@pytest.mark.parametrize("device", ["tpu", "xla", "mps", "cuda", "cuda:3"])
def test_an_unavailable_device_is_one_sentence(device):
    if device == "mps" and torch.backends.mps.is_available() or device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has the device")
    with pytest.raises(DllmPeftError, match=f"--device {device}|'{device}'"):
        resolve_device(device)


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_the_llada_class_raises_no_cache_deprecation_warning():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        backbone = tiny_llada(seed=0)
        output = backbone.model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
        assert len(output_cache(output)) == backbone.model.config.n_layers
        backbone.model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        logger.removeHandler(handler)
    assert not [record for record in records if "deprecated" in record.getMessage()]


def test_a_piped_run_logs_whole_lines_and_its_train_config_replays(tmp_path, capsys):
    first = tmp_path / "first"
    argv = ["train", "--max-steps", "2", "--rank", "4", "--val-size", "4", "--output", str(first)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    result = subprocess.run(
        [sys.executable, "-m", "dllm_peft", *argv], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr
    data_lines = [line for line in result.stderr.splitlines() if line.startswith("data: ")]
    assert len(data_lines) == 1 and len(data_lines[0]) > 80 and data_lines[0].rstrip().endswith("(1 process)")
    assert any(line.startswith("step 2/2 loss") for line in result.stderr.splitlines())

    second = tmp_path / "second"
    code, _, err = run(["train", "--config", str(first / "train_config.json"), "--output", str(second)], capsys)
    assert code == 0, err
    before = json.loads((first / "train_config.json").read_text())
    after = json.loads((second / "train_config.json").read_text())
    differing = {key for key in before if before[key] != after[key]}
    assert differing == {"output", "config"}
