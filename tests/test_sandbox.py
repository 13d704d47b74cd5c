"""The code sandbox: honest candidates pass, misbehaving ones are stopped and score 0, and the evaluator goes on.

Ported to the supervisor design of issue 18: there is no in-process audit hook any more (it could be undone from
inside), so each attack runs once, against the OS layers. Split-mode problems and whole programs are both covered;
the escapes of the issue itself are in `test_sandbox_hostile.py`. Timeouts are short and forks are refused by
seccomp, so the file stays safe on a shared machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dllm_peft.evaluation.sandbox import (
    REQUIRED_LAYERS,
    Problem,
    SandboxLimits,
    enforcement,
    run_program,
    run_programs,
)

LAYERS = enforcement()
CONFINED = not any(LAYERS.get(layer, "missing").startswith("missing") for layer in REQUIRED_LAYERS)
FAST = SandboxLimits(timeout=5.0)  # ample for honest programs on a loaded machine; endless loops get less


def run(item: Problem | str, limits: SandboxLimits = FAST):
    return run_program(item, limits, allow_weaker=not CONFINED)


def needs(layer: str, expected: str):
    """Skip where the OS layer that stops the attack is missing on this machine."""
    return pytest.mark.skipif(expected not in LAYERS.get(layer, ""), reason=f"{layer}: {LAYERS.get(layer)}")


def test_a_correct_program_passes_and_its_output_is_returned():
    outcome = run("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n")
    assert (outcome.passed, outcome.status, outcome.stdout) == (True, "passed", "ok")


def test_a_correct_split_problem_passes_and_the_tests_see_plain_values():
    problem = Problem("import math\n\ndef halves(x):\n    return [x / 2, float('nan'), -math.inf]\n",
                      "result = halves(3)\nassert result[0] == 1.5 and math.isnan(result[1]) and result[2] < 0\n")
    outcome = run(problem)
    assert outcome.passed, outcome.reason


@pytest.mark.parametrize(
    "source",
    ["assert 1 + 1 == 3", "raise ValueError('no')", "import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)"],
    ids=["failed-assert", "exception", "early-sys-exit", "early-os-exit"],
)
def test_failing_or_early_exiting_programs_do_not_pass(source):
    outcome = run(source)
    assert not outcome.passed and outcome.status == "failed"


@needs("filesystem", "scratch tmpfs")
def test_the_program_works_in_a_fresh_scratch_dir_that_is_gone_afterwards():
    source = "import os\nopen('notes.txt', 'w').write('x')\nos.mkdir('sub')\nprint(os.getcwd())\nprint(os.listdir('.'))"
    outcome = run(source)
    assert outcome.passed, outcome.stderr
    workdir, listing = outcome.stdout.splitlines()
    assert "dllm-peft-sandbox-" in workdir and sorted(eval(listing)) == ["notes.txt", "sub"]
    assert not Path(workdir).exists()


def test_an_endless_loop_is_killed_at_the_timeout():
    started = time.monotonic()
    outcome = run("while True:\n    pass\n", SandboxLimits(timeout=1.0))
    assert outcome.status in ("timeout", "signal") and not outcome.passed
    assert time.monotonic() - started < 6


def test_allocating_ten_gigabytes_fails():
    outcome = run("block = bytearray(10 * 1024 ** 3)\n")
    assert not outcome.passed and "MemoryError" in outcome.stderr


@needs("seccomp", "no new processes")
def test_a_fork_bomb_is_stopped():
    outcome = run("import os\nwhile True:\n    os.fork()\n")
    assert not outcome.passed and "Operation not permitted" in outcome.stderr


@needs("network", "network namespace")
def test_opening_a_socket_fails():
    outcome = run("import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=1)\n")
    assert not outcome.passed and outcome.status == "failed"


@needs("filesystem", "read-only")
def test_files_outside_the_scratch_dir_cannot_be_deleted(tmp_path):
    victim = tmp_path / "keep" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("still here")
    attacks = [f"import os\nos.remove({str(victim)!r})", f"import shutil\nshutil.rmtree({str(victim.parent)!r})",
               f"open({str(victim)!r}, 'w').write('gone')"]
    outcomes = run_programs(attacks, FAST, workers=2, allow_weaker=not CONFINED)
    assert not any(outcome.passed for outcome in outcomes)
    assert victim.read_text() == "still here"


def test_the_evaluator_survives_a_batch_of_misbehaving_candidates():
    sources = ["while True: pass", "x = bytearray(10 * 1024 ** 3)", "import os\nwhile True: os.fork()",
               "import socket; socket.socket().connect(('10.0.0.1', 1))", "assert True",
               Problem("def f():\n    return 1\n", "assert f() == 1\n")]
    outcomes = run_programs(sources, SandboxLimits(timeout=2.0), workers=2, allow_weaker=not CONFINED)
    assert [outcome.passed for outcome in outcomes] == [False, False, False, False, True, True]


def test_enforcement_reports_every_layer():
    assert set(LAYERS) == {*REQUIRED_LAYERS, "limits", "supervisor"}
    assert "memory 1024 MB" in LAYERS["limits"] and "not dumpable" in LAYERS["supervisor"]
