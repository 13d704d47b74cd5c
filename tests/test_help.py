"""`--help` at 80 columns: every flag name whole, options in panels, choices as real choices, no torch imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main

from dllm_peft.cli import app, main
from dllm_peft.cli.help import OTHER, PANELS, panel_of

COMMANDS = typer.main.get_command(app).commands


def render(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_at_80_columns_shows_every_flag_name_whole(command, capsys, monkeypatch):
    text = render([command, "--help"] if command else ["--help"], capsys, monkeypatch)
    assert "…" not in text, f"a cut name or help text in `dllm-peft {command} --help`"
    assert max(len(line) for line in text.splitlines()) <= 80
    params = COMMANDS[command].params if command else typer.main.get_command(app).params
    for param in params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert f" {name} " in text or f" {name}\n" in text, f"{name} is not shown whole"


def test_train_help_is_grouped_into_the_six_panels(capsys, monkeypatch):
    text = render(["train", "--help"], capsys, monkeypatch)
    panels = ["Model & data", "Method", "Optimisation", "Schedule & checkpoints", "Precision & devices", "Output"]
    positions = [text.index(f"─ {panel} ─") for panel in panels]
    assert positions == sorted(positions)
    # choices are listed, and a default model name that exists is named
    assert "Choices: lora, nara," in text and "[default: dllm-tiny]" in text
    assert "--help` for the list" not in text


def test_the_panels_name_real_flags_and_a_new_flag_lands_in_other():
    assert set(PANELS) == set(COMMANDS)
    for name, command in COMMANDS.items():
        stale = set(PANELS[name]) - {param.name for param in command.params}
        assert not stale, f"cli/help.py PANELS[{name!r}] names flags that do not exist: {sorted(stale)}"
    assert panel_of("train", "a_flag_added_tomorrow") == OTHER


def test_choices_are_checked_with_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "fp8" in capsys.readouterr().err


def test_the_choice_lists_equal_the_registries():
    from dllm_peft.adapters.registry import METHODS
    from dllm_peft.cli.help import METHOD_NAMES, RECIPE_NAMES
    from dllm_peft.training.recipes import RECIPES

    assert METHOD_NAMES == tuple(METHODS) and RECIPE_NAMES == tuple(RECIPES)


def test_the_root_help_lists_flags_without_a_type_and_every_command(capsys, monkeypatch):
    text = render(["--help"], capsys, monkeypatch)
    assert "<bool>" not in text and "Options" in text and "Commands" in text
    for name, command in COMMANDS.items():
        assert f" {name} " in text and command.get_short_help_str(200).split()[0] in text


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    from dllm_peft import __version__

    assert capsys.readouterr().out.strip() == f"dllm-peft {__version__}"


@pytest.mark.parametrize("command", ["", "train", "eval"])
def test_help_imports_no_torch_transformers_or_lm_eval(command):
    argv = [command, "--help"] if command else ["--help"]
    probe = (
        "import sys\nfrom dllm_peft.cli import main\n"
        f"try:\n main({argv!r})\nexcept SystemExit:\n pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
