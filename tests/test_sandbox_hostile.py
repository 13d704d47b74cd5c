"""Hostile candidates (issue 18): every reported escape is tried again, and both containment and the score are checked.

Each attack is a `Problem` whose solution misbehaves. Containment is checked from outside (the host file is absent,
the listener got no connection, the victim process lives), and the score must be a failure: where the attack is a
leak, the candidate's function returns what it found and the trusted tests (run by the supervisor) pass only if the
leak worked. Attacks that need namespaces are skipped, with the reason, on machines without user namespaces.
Time limits are short and nothing here can fork without bound, so the file is safe and quick on a shared machine.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dllm_peft.evaluation import sandbox
from dllm_peft.evaluation.sandbox import (
    OUTPUT_TAIL,
    Problem,
    SandboxLimits,
    run_program,
    run_programs,
)

SANDBOX_DIR = Path(sandbox.__file__).resolve().parent

LAYERS = sandbox.enforcement()
MISSING = [layer for layer in sandbox.REQUIRED_LAYERS if LAYERS.get(layer, "missing").startswith("missing")]
CONFINED = not MISSING
needs_namespaces = pytest.mark.skipif(not CONFINED, reason=f"this machine lacks the sandbox layers {MISSING}")
FAST = SandboxLimits(timeout=5.0, call_timeout=3.0)
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-4, 4) == 0\n"
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def run(problem: Problem | str, limits: SandboxLimits = FAST):
    return run_program(problem, limits, allow_weaker=not CONFINED)


def attack(body: str, result: str = "0") -> Problem:
    """A candidate for `add` that runs `body` when loaded and whose `add` returns `result` (wrong by default)."""
    return Problem(f"{body}\n\ndef add(a, b):\n    return {result}\n", ADD_TESTS)


def leak(body: str, tests: str) -> Problem:
    """A candidate whose `leak()` returns what `body` (the function's body) found; `tests` pass only if it leaked."""
    indented = "\n".join("    " + line for line in body.splitlines())
    return Problem(f"import os\n\ndef leak():\n{indented}\n", tests)


# -- honest candidates ----------------------------------------------------------------------------------------------
HUMANEVAL_PROMPT = 'from typing import List\n\n\ndef total(numbers: List[int]) -> int:\n    """Sum."""\n'
HUMANEVAL_TESTS = ("METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2, 3]) == 6\n"
                   "    assert candidate([]) == 0\n    assert abs(candidate([0.5, 0.25]) - 0.75) < 1e-9\n\n"
                   "check(total)\n")


def humaneval(completion: str) -> Problem:
    return Problem(HUMANEVAL_PROMPT + completion, HUMANEVAL_TESTS, "total", HUMANEVAL_PROMPT)


def test_a_correct_humaneval_solution_passes():
    outcome = run(humaneval("    return sum(numbers)\n"))
    assert (outcome.passed, outcome.status, outcome.reason) == (True, "passed", "")


@pytest.mark.parametrize("completion, reason", [
    ("    return len(numbers)\n", "AssertionError"),
    ("    raise ValueError('no idea')\n", "ValueError: no idea"),
    ("    return (\n", "SyntaxError"),
], ids=["wrong", "raises", "syntax-error"])
def test_a_wrong_or_raising_solution_fails(completion, reason):
    outcome = run(humaneval(completion))
    assert not outcome.passed and outcome.status == "failed" and reason in outcome.reason


# -- the escapes of issue 18 ----------------------------------------------------------------------------------------
@needs_namespaces
def test_tampering_with_the_candidates_own_main_changes_no_rule(tmp_path):
    """The audit-hook bypass: the candidate rewrites every module it can reach; the OS layers still hold."""
    host_file = tmp_path / "written-by-candidate"
    body = (
        "import sys, gc\n"
        "for module in list(sys.modules.values()):\n"
        "    for name in ('REFUSED_EVENTS', 'PATH_EVENTS', '_audit_guard'):\n"
        "        if hasattr(module, name):\n"
        "            setattr(module, name, frozenset())\n"
        "sys.addaudithook(lambda *event: None)\n"
        f"{LIBC}"
        "print('fork', os.fork() if hasattr(os, 'fork') else None)\n"
    )
    after = f"try:\n    open({str(host_file)!r}, 'w').write('x')\nexcept OSError as error:\n    print(error)\n"
    outcomes = run_programs([attack(body), attack(after)], FAST, workers=2, allow_weaker=not CONFINED)
    assert not any(outcome.passed for outcome in outcomes)
    assert "Operation not permitted" in outcomes[0].stderr
    assert not host_file.exists()


@needs_namespaces
def test_remounting_the_root_read_write_fails_and_no_host_file_is_written(tmp_path):
    outside = tmp_path / "outside.txt"
    visible = Path(sys.prefix) / f"sandbox-escape-{secrets.token_hex(4)}.txt"  # inside the view, read-only there
    body = LIBC + (
        "MS_REMOUNT, MS_BIND = 32, 4096\n"
        "for flags in (MS_REMOUNT, MS_REMOUNT | MS_BIND):\n"
        "    print('remount', libc.mount(None, b'/', None, flags, None), ctypes.get_errno())\n"
        "print('umount', libc.umount2(b'/usr', 2), ctypes.get_errno())\n"
        f"for path in ({str(outside)!r}, {str(visible)!r}, '/usr/sandbox-escape'):\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('refused', path, error)\n"
    )
    try:
        outcome = run(attack(body))
        assert not outcome.passed
        assert "remount -1 1" in outcome.stdout and "wrote" not in outcome.stdout
        assert not outside.exists() and not visible.exists() and not Path("/usr/sandbox-escape").exists()
    finally:
        visible.unlink(missing_ok=True)


@needs_namespaces
def test_joining_the_parents_network_namespace_reaches_no_listener():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    body = LIBC + (
        "import socket\n"
        f"for path in ('/proc/1/ns/net', '/proc/{os.getpid()}/ns/net', '/proc/self/ns/net'):\n"
        "    try:\n"
        "        fd = os.open(path, os.O_RDONLY)\n"
        "        print('setns', path, libc.setns(fd, 0x40000000), ctypes.get_errno())\n"
        "    except OSError as error:\n"
        "        print('open', path, error)\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    print('connected')\n"
        "except OSError as error:\n"
        "    print('connect', error)\n"
    )
    try:
        outcome = run(attack(body))
        assert not outcome.passed and "connected" not in outcome.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@needs_namespaces
def test_killing_the_parent_through_ctypes_fails_and_the_verdict_stands():
    body = LIBC + (
        f"for pid in (os.getppid(), {os.getpid()}, 0, -1):\n"
        "    print('kill', pid, libc.kill(pid, 9), ctypes.get_errno())\n"
    )
    outcome = run(attack(body))
    assert not outcome.passed and outcome.status == "failed" and outcome.reason == "AssertionError"
    assert "kill 0 -1 1" in outcome.stdout and "kill -1 -1 1" in outcome.stdout  # refused by seccomp


@needs_namespaces
def test_pidfd_send_signal_reaches_neither_the_parent_nor_an_unrelated_process():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        body = LIBC + (
            "import signal\n"
            f"for pid in (os.getppid(), {os.getpid()}, {victim.pid}):\n"
            "    try:\n"
            "        signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)\n"
            "        print('signalled', pid)\n"
            "    except OSError as error:\n"
            "        print('pidfd', pid, error)\n"
            "    print('raw', libc.syscall(434, pid, 0), libc.syscall(424, 3, 9, None, 0))\n"
            "for fd in range(64):\n"
            "    try:\n"
            "        signal.pidfd_send_signal(fd, signal.SIGKILL)\n"
            "        print('signalled fd', fd)\n"
            "    except OSError:\n"
            "        pass\n"
        )
        outcome = run(attack(body))
        time.sleep(0.2)
        assert victim.poll() is None
        assert not outcome.passed and "signalled" not in outcome.stdout and "raw -1 -1" in outcome.stdout
    finally:
        victim.kill()
        victim.wait()


@needs_namespaces
def test_a_forged_completion_does_not_pass():
    """The 164/164 forgery: look for a marker or the tests, fake protocol replies, exit early; still a fail."""
    token = f"SECRET-{secrets.token_hex(8)}"
    search = (
        "import gc, re, sys\n"
        "token = re.compile('SECRET' + '-[0-9a-f]{16}')\n"  # split, so that the pattern does not match itself
        "texts = [text for text in gc.get_objects() if isinstance(text, str)]\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    texts += [repr(value) for value in frame.f_locals.values()]\n"
        "    frame = frame.f_back\n"
        "found = [match.group() for text in texts for match in [token.search(text)] if match]\n"
        "print('found', len(found))\n"
        "return found[0] if found else 'nothing'\n"
    )
    leaking = leak(search, f"assert leak() == {token!r}\n")
    forging = (
        "import json, struct, os, sys\n"
        "for message in ({'ready': {}}, {'result': '5'}, {'result': '0'}, {'done': True}):\n"
        "    payload = json.dumps(message).encode()\n"
        "    for fd in range(1, 64):\n"
        "        try:\n"
        "            os.write(fd, struct.pack('<I', len(payload)) + payload)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('passed')\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    always_equal = "class Anything:\n    def __eq__(self, other):\n        return True\n"
    candidates = [leaking, attack(forging, "5"), attack(always_equal, "Anything()"), attack("", "(_ for _ in ())")]
    outcomes = run_programs(candidates, FAST, workers=2, allow_weaker=not CONFINED)
    assert [outcome.passed for outcome in outcomes] == [False] * 4
    assert "found 0" in outcomes[0].stdout and token not in outcomes[0].stdout
    assert "not a plain literal" in outcomes[2].reason and "not a plain literal" in outcomes[3].reason


@needs_namespaces
def test_etc_shadow_cannot_be_read():
    shadow = Path("/etc/shadow")
    if not os.access(shadow, os.R_OK):
        pytest.skip("this test process cannot read /etc/shadow itself")
    digest = hashlib.sha256(shadow.read_bytes()).hexdigest()
    body = ("try:\n    return open('/etc/shadow', 'rb').read().hex()\nexcept OSError as error:\n"
            "    print('refused', error)\n    return ''\n")
    tests = f"assert leak() == bytes.fromhex(leak()).hex() and __import__('hashlib').sha256(bytes.fromhex(leak()))" \
            f".hexdigest() == {digest!r}\n"
    outcome = run(leak(body, tests))
    assert not outcome.passed and "refused" in outcome.stdout and "root:" not in outcome.stdout


@needs_namespaces
def test_the_evaluators_environment_is_not_visible(monkeypatch):
    secret = f"token-{secrets.token_hex(8)}"
    monkeypatch.setenv("DLLM_PEFT_TEST_SECRET", secret)
    body = (
        "found = [value for value in os.environ.values() if value.startswith('token-')]\n"
        f"for path in ('/proc/1/environ', '/proc/{os.getpid()}/environ', '/proc/self/environ'):\n"
        "    try:\n"
        "        found += [part.decode() for part in open(path, 'rb').read().split(b'\\0') if b'token-' in part]\n"
        "    except OSError as error:\n"
        "        print('refused', path, error)\n"
        "print('environment', sorted(os.environ))\n"
        "return found[0].split('=')[-1] if found else 'nothing'\n"
    )
    outcome = run(leak(body, f"assert leak() == {secret!r}\n"))
    assert not outcome.passed and "environment ['HOME', 'LANG', 'PATH', 'TMPDIR']" in outcome.stdout
    assert secret not in outcome.stdout + outcome.stderr + outcome.reason


# -- kept contained ------------------------------------------------------------------------------------------------
def test_a_fork_bomb_is_refused():
    outcomes = run_programs([attack("import os\nwhile True:\n    os.fork()\n"),
                             attack("import subprocess\nsubprocess.Popen(['true'])\n")],
                            FAST, workers=2, allow_weaker=not CONFINED)
    assert not any(outcome.passed for outcome in outcomes)
    assert all("Operation not permitted" in outcome.stderr for outcome in outcomes)


def test_allocating_thirty_gigabytes_fails():
    outcome = run(attack("", "len(bytearray(30 * 1024 ** 3))"))
    assert not outcome.passed and "MemoryError" in outcome.reason


@pytest.mark.parametrize("where", ["at-load", "in-call"])
def test_an_endless_loop_hits_the_timeout(where):
    problem = attack("while True:\n    pass\n") if where == "at-load" else Problem(
        "def add(a, b):\n    while True:\n        pass\n", ADD_TESTS)
    started = time.monotonic()
    outcome = run(problem, SandboxLimits(timeout=3.0, call_timeout=1.0))
    assert not outcome.passed and outcome.status == "timeout"
    assert time.monotonic() - started < 6


def test_a_background_child_is_neither_started_nor_left_behind():
    marker = f"{time.time() % 1000:.6f}"
    body = (
        "import os, subprocess\n"
        f"for start in (lambda: subprocess.Popen(['sleep', '{marker}']), lambda: os.posix_spawn('/usr/bin/sleep', "
        f"['sleep', '{marker}'], {{}})):\n"
        "    try:\n"
        "        start()\n"
        "        print('started')\n"
        "    except OSError as error:\n"
        "        print('refused', error)\n"
    )
    outcome = run(attack(body, "a + b"))
    running = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid).endswith(marker)]
    assert "started" not in outcome.stdout and outcome.stdout.count("refused") == 2 and not running
    assert outcome.passed  # a correct solution whose attempt failed still scores by its answers


def test_two_hundred_megabytes_of_stdout_are_capped():
    body = "import sys\nchunk = 'x' * (1024 * 1024)\nfor _ in range(200):\n    sys.stdout.write(chunk)\n"
    started = time.monotonic()
    outcome = run(attack(body, "a + b"), SandboxLimits(timeout=5.0, max_file_mb=4))
    assert not outcome.passed and "File too large" in outcome.stderr + outcome.reason
    assert len(outcome.stdout) <= OUTPUT_TAIL and time.monotonic() - started < 10


def test_a_machine_without_user_namespaces_refuses_unless_weaker_is_allowed():
    """Run in a user namespace without id mapping: no namespace can be created there, so layers are missing."""
    script = (
        f"import sys; sys.path.insert(0, {str(SANDBOX_DIR)!r}); import sandbox\n"
        "problem = sandbox.Problem('def add(a, b):\\n    return a + b\\n', 'assert add(2, 3) == 5\\n')\n"
        "try:\n    sandbox.run_program(problem)\nexcept sandbox.SandboxUnavailable as error:\n    print(error)\n"
        "print(sandbox.run_program(problem, allow_weaker=True).passed)\n"
    )
    try:
        result = subprocess.run(["unshare", "-U", sys.executable, "-I", "-c", script], capture_output=True,
                                text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("the unshare tool is not installed")
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"user namespaces are not available: {result.stderr.strip()}")
    first, second = result.stdout.splitlines()
    assert first.startswith("This machine cannot apply the sandbox layers user, pid, network, filesystem")
    assert first.endswith("pass allow_weaker=True to run candidates without them.") and second == "True"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
