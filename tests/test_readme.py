"""The README is a front page that stays true: CI runs its first commands, every command it shows runs, every output
block is written by `benchmarks/readme_examples/render.py`, every link resolves, and it stays under 15,000 characters."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from dllm_peft.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE_BLOCK = re.compile(r"<!-- example:(\w+) -->\n```text\n\$ (.*?)\n(.*?)```\n<!-- /example:\1 -->", re.S)
# Shortened for the test suite (a later flag wins): the README's own run is `benchmarks/readme_examples/render.py`.
QUICK = {"train": ["--max-steps", "5", "--val-size", "4", "--eval-every", "0"], "eval": ["--limit", "4"]}


def examples_script():
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "benchmarks/readme_examples/render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_code_block() -> list[str]:
    block = README.split("```", 2)[1]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()[1:]]
    return [line for line in lines if line]


def test_readme_starts_with_install_main_job_and_test_command():
    install, main_job, test = first_code_block()[:3]
    assert install.startswith("pip install") and main_job == "dllm-peft train --method nara"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and test in ci


def test_readme_is_a_front_page():
    assert len(README.encode()) <= 15_000


def test_every_output_block_is_written_by_the_examples_script():
    blocks = EXAMPLE_BLOCK.findall(README)
    assert [(name, command) for name, command, _ in blocks] == list(examples_script().EXAMPLES)
    assert README.count("```text") == len(blocks), "an output block outside <!-- example:NAME --> markers"


def test_every_relative_link_resolves():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    """Each `$ dllm-peft …` command of the README, in order, in a fresh folder (training and eval shortened)."""
    monkeypatch.chdir(tmp_path)
    for name, command in examples_script().EXAMPLES:
        words = subprocess.run(  # bash expands the quoting ($'…') exactly as in a terminal
            ["bash", "-c", f"printf '%s\\0' {command.removeprefix('dllm-peft ')}"], capture_output=True, check=True
        ).stdout.decode().split("\0")[:-1]
        if name == "eval" and importlib.util.find_spec("lm_eval") is None:
            pytest.skip("lm-eval is not installed (the [eval] extra)")
        with pytest.raises(SystemExit) as exit_info:
            main(words + QUICK.get(name, []))
        assert exit_info.value.code == 0, f"`{command}` failed: {capsys.readouterr().err}"
