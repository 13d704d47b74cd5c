"""The prepare-output rule (`outputs.py`): paths checked before work, --overwrite replaces only what a command wrote."""

from __future__ import annotations

import json

import pytest

from dllm_peft.adapters.files import save_adapter
from dllm_peft.errors import DllmPeftError
from dllm_peft.outputs import (
    MANIFEST,
    check_directory_output,
    check_file_outputs,
    check_output_path,
    replaced_when_complete,
)

from .test_merge import random_adapter, run


def test_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DllmPeftError, match="lies under the file"):
        check_output_path(tmp_path / "file" / "out")
    with pytest.raises(DllmPeftError, match="lies inside /proc"):
        check_output_path("/proc/dllm-out")
    with pytest.raises(DllmPeftError, match="is a file; name a directory"):
        check_output_path(tmp_path / "file")
    with pytest.raises(DllmPeftError, match="is a directory; name a file"):
        check_output_path(tmp_path, "--output", "file")
    assert check_output_path(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]  # nothing written by the check


def test_overwrite_replaces_only_the_entries_the_command_wrote(tmp_path):
    output = tmp_path / "out"
    with replaced_when_complete(output, "merge") as staging:
        (staging / "a").write_text("1")
        (staging / "old-shard").write_text("1")
    (output / "notes.txt").write_text("mine")
    check_directory_output(output, True, [], "merge")
    with pytest.raises(DllmPeftError, match="not empty; pass --overwrite"):
        check_directory_output(output, False, [], "merge")
    with pytest.raises(RuntimeError), replaced_when_complete(output, "merge") as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("the new result failed half-way")
    assert (output / "a").read_text() == "1" and (output / "old-shard").exists()  # untouched until a new result exists
    with replaced_when_complete(output, "merge") as staging:
        (staging / "a").write_text("3")
    assert sorted(path.name for path in output.iterdir()) == sorted([MANIFEST, "a", "notes.txt"])
    assert (output / "a").read_text() == "3" and (output / "notes.txt").read_text() == "mine"
    assert json.loads((output / MANIFEST).read_text())["files"] == ["a"]
    assert not list(tmp_path.glob(".out.*"))


def test_a_companion_file_the_user_did_not_name_is_never_overwritten(tmp_path):
    (tmp_path / "r.md").write_text("my notes")
    with pytest.raises(DllmPeftError, match="r.md', which exists and was not written by dllm-peft"):
        check_file_outputs(tmp_path / "r.json", [tmp_path / "r.md"], "--output", "<!-- marker -->")
    (tmp_path / "r.md").write_text("| table |\n\n<!-- marker -->\n")
    check_file_outputs(tmp_path / "r.json", [tmp_path / "r.md"], "--output", "<!-- marker -->")


def test_export_overwrite_keeps_unrelated_files(tmp_path, capsys):
    save_adapter(random_adapter("lora"), tmp_path / "adapter")
    argv = ["export", "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "peft")]
    assert run(argv, capsys)[0] in (0, None)
    (tmp_path / "peft" / "NOTES.md").write_text("mine")
    assert run([*argv, "--overwrite"], capsys)[0] in (0, None)
    assert (tmp_path / "peft" / "NOTES.md").read_text() == "mine"
