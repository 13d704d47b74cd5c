"""The command line: five subcommands, flags in sync with the config, one sentence for every expected mistake."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import typer.main

from dllm_peft.cli import app, main
from dllm_peft.config import TrainConfig


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_lists_the_five_subcommands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in ("train", "sample", "eval", "merge", "inspect"):
        assert name in out


def test_train_flags_equal_the_config_fields():
    command = typer.main.get_command(app).commands["train"]
    flags = {param.name for param in command.params}
    assert flags == {field.name for field in dataclasses.fields(TrainConfig)}


def test_train_writes_an_adapter_and_the_loss_goes_down(tmp_path, capsys):
    output = tmp_path / "out"
    code, out, _ = run(["train", "--method", "nara", "--max-steps", "20", "--output", str(output), "--rank", "8"], capsys)
    assert code in (0, None)
    assert (output / "dllm_peft_adapter.json").exists() and (output / "dllm_peft_adapter.safetensors").exists()
    assert json.loads((output / "dllm_peft_adapter.json").read_text())["method"] == "nara"
    first, last = [float(x) for x in out.split("loss ")[1].split(" (")[0].split(" → ")]
    assert last < first


def bad(argv, capsys, expected):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert expected in err.replace("\n", " ")
    assert "Traceback" not in err + out
    assert len([line for line in err.splitlines() if line.strip()]) <= 3  # one sentence (rich may wrap it)


def test_unknown_method(tmp_path, capsys):
    bad(["train", "--method", "loraa", "--output", str(tmp_path / "o")], capsys, "unknown --method 'loraa'; choose one of: lora")


def test_targets_that_match_nothing(tmp_path, capsys):
    bad(["train", "--targets", "qproj", "--output", str(tmp_path / "o")], capsys, "match no linear layer")


def test_malformed_data_line_names_its_line(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    bad(["train", "--data", str(data), "--output", str(tmp_path / "o")], capsys, "data.jsonl:2: not a valid JSON line")
    assert not (tmp_path / "o").exists()


def test_missing_fields_list_the_present_ones(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n')
    bad(["train", "--data", str(data), "--output", str(tmp_path / "o")], capsys, "present: answer, question")


def test_output_holding_an_adapter_needs_overwrite(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "adapter_config.json").write_text("{}")
    bad(["train", "--output", str(tmp_path / "o")], capsys, "already holds an adapter; pass --overwrite")


def test_the_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dllm_peft", "train", "--method", "nope", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown --method 'nope'" in result.stderr
