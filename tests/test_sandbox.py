"""The code sandbox: honest programs pass, misbehaving ones are stopped and score 0, and the evaluator goes on.

Every attack runs twice: with all layers, and with the Python audit hook switched off, so the OS layers (namespaces,
seccomp, resource limits, the process-group kill) are shown to stop it on their own where this machine has them.
Timeouts are short and the fork bomb is bounded (seccomp refuses the fork; without seccomp RLIMIT_NPROC does), so the
file stays safe on a shared machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dllm_peft.evaluation.sandbox import (
    SandboxLimits,
    enforcement,
    run_program,
    run_programs,
)

LAYERS = enforcement()
FAST = SandboxLimits(timeout=5.0)  # ample for honest programs on a loaded machine; endless loops get less


def limits(hook: bool, timeout: float = 5.0) -> SandboxLimits:
    return SandboxLimits(timeout=timeout, block_risky_calls=hook)


def needs(layer: str, expected: str):
    """Skip the hook-less variant when the OS layer is missing here (then only the hook would stop the attack)."""
    return pytest.mark.skipif(expected not in LAYERS.get(layer, ""), reason=f"{layer}: {LAYERS.get(layer)}")


def test_a_correct_program_passes_and_its_output_is_returned():
    outcome = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n", FAST)
    assert (outcome.passed, outcome.status, outcome.stdout) == (True, "passed", "ok")


@pytest.mark.parametrize(
    "source",
    ["assert 1 + 1 == 3", "raise ValueError('no')", "import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)"],
    ids=["failed-assert", "exception", "early-sys-exit", "early-os-exit"],
)
def test_failing_or_early_exiting_programs_do_not_pass(source):
    outcome = run_program(source, FAST)
    assert not outcome.passed and outcome.status == "failed"


def test_the_program_works_in_a_fresh_temp_dir_that_is_removed_afterwards():
    source = "import os\nopen('notes.txt', 'w').write('x')\nos.mkdir('sub')\nprint(os.getcwd())\nprint(os.listdir('.'))"
    outcome = run_program(source, FAST)
    assert outcome.passed, outcome.stderr
    workdir, listing = outcome.stdout.splitlines()
    assert "dllm-peft-sandbox-" in workdir and sorted(eval(listing)) == ["notes.txt", "sub"]
    assert not Path(workdir).exists()


# -- attacks (Must show 4) --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", [True, pytest.param(False, id="os-layers-only")])
def test_an_endless_loop_is_killed_at_the_timeout(hook):
    started = time.monotonic()
    outcome = run_program("while True:\n    pass\n", limits(hook, timeout=1.0))
    assert outcome.status in ("timeout", "signal") and not outcome.passed
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("hook", [True, pytest.param(False, id="os-layers-only")])
def test_allocating_ten_gigabytes_fails(hook):
    outcome = run_program("block = bytearray(10 * 1024 ** 3)\n", limits(hook))
    assert not outcome.passed and "MemoryError" in outcome.stderr


@pytest.mark.parametrize(
    "hook", [True, pytest.param(False, id="os-layers-only", marks=needs("processes", "seccomp"))]
)
def test_a_fork_bomb_is_stopped(hook):
    source = "import os\nwhile True:\n    os.fork()\n"
    outcome = run_program(source, limits(hook))
    assert not outcome.passed
    refused_by = "sandbox: os.fork is not allowed" if hook else "Operation not permitted"
    assert refused_by in outcome.stderr


@pytest.mark.parametrize(
    "hook", [True, pytest.param(False, id="os-layers-only", marks=needs("network", "namespace"))]
)
def test_opening_a_socket_fails(hook):
    source = "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=1)\n"
    outcome = run_program(source, limits(hook))
    assert not outcome.passed and outcome.status == "failed"


@pytest.mark.parametrize(
    "hook", [True, pytest.param(False, id="os-layers-only", marks=needs("filesystem", "read-only"))]
)
def test_files_outside_the_temp_dir_cannot_be_deleted(tmp_path, hook):
    victim = tmp_path / "keep" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("still here")
    for attack in (f"import os\nos.remove({str(victim)!r})", f"import shutil\nshutil.rmtree({str(victim.parent)!r})",
                   f"open({str(victim)!r}, 'w').write('gone')"):
        outcome = run_program(attack, limits(hook))
        assert not outcome.passed
    assert victim.read_text() == "still here"


def test_the_evaluator_survives_a_batch_of_misbehaving_candidates():
    sources = ["while True: pass", "x = bytearray(10 * 1024 ** 3)", "import os\nwhile True: os.fork()",
               "import socket; socket.socket().connect(('10.0.0.1', 1))", "assert True"]
    outcomes = run_programs(sources, SandboxLimits(timeout=2.0), workers=2)
    assert [outcome.passed for outcome in outcomes] == [False, False, False, False, True]


def test_enforcement_reports_every_layer():
    assert set(LAYERS) == {"filesystem", "network", "processes", "limits", "audit_hook"}
    assert LAYERS["audit_hook"] == "on" and "memory 1024 MB" in LAYERS["limits"]
