"""Runs always finish: a resume with no steps left, damaged checkpoints, NaN, a full disk, a failed --overwrite."""

from __future__ import annotations

import shutil

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

from dllm_peft.adapters.files import read_adapter
from dllm_peft.cli import main
from dllm_peft.training.checkpoint import checkpoint_steps

RUN = ["train", "--rank", "4", "--batch-size", "4", "--val-size", "4", "--eval-every", "0", "--lr", "0.01"]


def cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, " ".join(captured.err.split())


def trained(output, capsys, *extra):
    code, err = cli([*RUN, "--output", str(output), *extra], capsys)
    assert code == 0, err
    return read_adapter(output)[1]


def same(a, b):
    return set(a) == set(b) and all(torch.equal(a[name], b[name]) for name in a)


def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_same_adapter(tmp_path, capsys):
    output = tmp_path / "o"
    reference = trained(output, capsys, "--max-steps", "2", "--save-every", "2")
    assert checkpoint_steps(output) == [2]
    # what a SIGKILL between the last checkpoint and the final adapter leaves: no adapter, half a temporary file
    (output / "dllm_peft_adapter.safetensors").unlink()
    (output / "dllm_peft_adapter.json").unlink()
    (output / ".dllm_peft_adapter.safetensors.abc123.tmp").write_bytes(b"half")
    assert same(trained(output, capsys, "--resume"), reference)
    assert not list(output.glob(".*.tmp"))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    reference = trained(tmp_path / "ref", capsys, "--max-steps", "4", "--save-every", "1")
    for damage in ("optimizer", "state"):
        output = tmp_path / damage
        shutil.copytree(tmp_path / "ref", output)
        assert checkpoint_steps(output) == [3, 4]
        newest = output / "checkpoints" / "step-4"
        if damage == "optimizer":
            (newest / "optimizer.safetensors").unlink()
        else:
            (newest / "trainer_state.json").write_text('{"step": 4, "exam')
        code, err = cli(["train", "--output", str(output), "--resume"], capsys)
        assert code == 0 and f"checkpoint {newest} is damaged" in err and "resuming from" in err and "step 3" in err
        assert same(read_adapter(output)[1], reference)
        assert checkpoint_steps(output) == [3, 4]  # written anew


def test_no_checkpoint_is_saved_from_a_state_that_leads_to_nan(tmp_path, capsys):
    output = tmp_path / "o"
    trained(output, capsys, "--max-steps", "2", "--save-every", "1")
    code, err = cli(["train", "--output", str(output), "--resume", "--max-steps", "6", "--lr", "1e30"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "became nan at step 4, so that step was not applied" in err
    assert f"the last good checkpoint is {output / 'checkpoints' / 'step-2'}" in err
    assert checkpoint_steps(output) == [1, 2]  # step 3's weights (lr 1e30) were never saved
    assert all(torch.isfinite(tensor).all() for tensor in read_adapter(output / "checkpoints" / "step-2")[1].values())


def test_a_full_disk_is_one_sentence_and_the_previous_checkpoint_stays_loadable(tmp_path, capsys, monkeypatch):
    output = tmp_path / "o"
    calls = {"n": 0}
    real_save = safetensors.torch.save_file  # atomic.py imports it when it writes

    def save_until_full(tensors, path, metadata=None):
        calls["n"] += 1
        if "step-2" in str(path):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: \"No space left on device\" })")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)
    code, err = cli([*RUN, "--output", str(output), "--max-steps", "4", "--save-every", "1"], capsys)
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in err
    assert "saving checkpoint step-2" in err and "failed: the disk is full; free space and continue from" in err
    assert checkpoint_steps(output) == [1] and not list((output / "checkpoints").glob(".step-*"))
    reference = trained(tmp_path / "ref", capsys, "--max-steps", "4", "--save-every", "1")
    assert same(trained(output, capsys, "--resume"), reference)


def test_overwrite_keeps_the_old_adapter_until_the_new_run_has_one(tmp_path, capsys):
    output = tmp_path / "o"
    before = trained(output, capsys, "--max-steps", "1")
    code, err = cli([*RUN, "--output", str(output), "--overwrite", "--max-steps", "4", "--lr", "1e30"], capsys)
    assert code == 2 and "became nan" in err
    assert same(read_adapter(output)[1], before)  # the failed run saved nothing: the old one is back
    assert not (output / ".replaced-run").exists()
    after = trained(output, capsys, "--max-steps", "2", "--overwrite", "--method", "lora")
    assert read_adapter(output)[0]["method"] == "lora" and not same(after, before)
    assert not (output / ".replaced-run").exists()
