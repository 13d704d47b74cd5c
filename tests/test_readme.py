"""The README's first commands are what CI runs: keep them in sync."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_code_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```", 2)[1]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()[1:]]
    return [line for line in lines if line]


def test_readme_starts_with_install_main_job_and_test_command():
    install, main_job, test = first_code_block()[:3]
    assert install.startswith("pip install") and main_job == "dllm-peft train --method nara"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and test in ci
