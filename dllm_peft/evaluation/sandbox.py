"""Run untrusted generated code confined, and judge it from outside: the candidate never holds its own verdict.

Two processes per candidate, both started from this very file (stdlib only, so no package needs to be importable):

* the **supervisor**, `python -I -B sandbox.py`, trusted. It builds the confinement, forks the candidate into it,
  and keeps the verdict: in *split mode* (`Problem`) it runs the dataset's tests itself, in its own process;
* the **candidate**, forked from the supervisor. Before any candidate code runs it drops root and every capability
  for good, then `exec`s the solution and serves function calls over a private pipe pair.

Why split mode: a check that runs inside the candidate's process can be undone by the candidate (the audit hook and
the completion marker of the previous design were both read and defeated from the candidate's own `__main__`).
Here the tests run in the supervisor with proxy callables bound to the candidate's names. A call sends the function
name and the arguments as a Python literal; the reply is the `repr` of the result, parsed with `ast.literal_eval`
(`nan` and `inf` included), and it must echo the call's random id. So the tests compare plain data (no `__eq__`
tricks), a non-literal result fails, an early exit is a failed call (replies written ahead cannot carry the id), and
there is nothing to forge: the candidate process never sees the tests (they are read from the parent only after the
fork, so they are not even in its memory). *Whole-program mode* (`run_program` on a
string, asserts inline) is kept for compatibility and is weaker: the program's own process reports that it ran to
its end, which a hostile program can fake. The HumanEval and MBPP scorers use split mode.

Layers (`enforcement()` reports each; a missing one makes every run refuse unless `allow_weaker=True`):

* ``user``: the candidate enters a fresh user namespace mapped to an unprivileged id outside (a per-run id when the
  supervisor runs as root, so its processes and files belong to nobody else), sheds its supplementary groups, and
  drops every capability (bounding, ambient, effective, permitted, inheritable), with `no_new_privs`;
* ``pid``: it is pid 1 of its own PID namespace: it cannot see or signal anything outside, and all that it starts
  dies with it;
* ``network``: a network namespace without interfaces (a down loopback);
* ``filesystem``: `pivot_root` into a minimal read-only view (the Python installation, /usr, the libraries, a few
  device nodes) plus a size-limited writable tmpfs as its scratch dir. /etc (so /etc/shadow), /home, /root, /proc
  and the evaluator's files are simply absent; the environment is a clean one of four variables;
* ``seccomp``: refuses new processes (fork, vfork, exec, clone without CLONE_THREAD), sockets other than AF_UNIX,
  kill of a process group (pid 0 or below: the group is the supervisor's), and the calls that reach other
  processes or the kernel's configuration (ptrace, process_vm_readv/writev, pidfd_open/pidfd_send_signal/
  pidfd_getfd, setns, unshare, mount and the new mount API, pivot_root, chroot, bpf, keyctl, perf_event_open,
  userfaultfd, io_uring, modules, kexec, reboot, setsid/setpgid);
* ``supervisor``: not dumpable (`PR_SET_DUMPABLE 0`), another uid and outside the candidate's PID namespace, so it
  cannot be ptraced, signalled or have its memory read; it runs the tests inside the same view and network
  namespace;
* ``limits``: `RLIMIT_AS`, `RLIMIT_CPU`, `RLIMIT_NPROC`, `RLIMIT_FSIZE` (stdout and stderr are size-capped files
  apart from the protocol pipes), `RLIMIT_NOFILE`, no core files; a per-call and an overall timeout, and the
  evaluator kills the whole process group if the supervisor itself overruns.
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

OUTPUT_TAIL = 2000
MAX_MESSAGE = 4 * 1024 * 1024  # largest request or reply on the private pipes
SUPERVISOR_GRACE = 5.0  # seconds the evaluator waits beyond the timeout before killing a stuck supervisor
REQUIRED_LAYERS = ("user", "pid", "network", "filesystem", "seccomp")
CANDIDATE_ID = 1000  # the candidate's uid and gid inside its user namespace
SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf}
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"

# Linux constants (sched.h, mount.h, prctl.h, capability.h, seccomp.h, filter.h)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
CLONE_NEWIPC, CLONE_THREAD = 0x08000000, 0x00010000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 4, 24, 38, 47
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_CAP_AMBIENT_CLEAR_ALL = 22, 2, 4
CAPABILITY_VERSION_3 = 0x20080522
BPF_LOAD, BPF_JEQ, BPF_JGE, BPF_JSET, BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06  # ld [k]; jeq/jge/jset #k; ret #k
RET_ALLOW, RET_EPERM, RET_ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
AF_UNIX = 1


@dataclasses.dataclass(frozen=True)
class SyscallTable:
    """The numbers the seccomp filter needs on one machine type."""

    audit_arch: int
    clone: int
    clone3: int
    socket: int
    kill: int
    pivot_root: int
    refused: tuple[int, ...]  # answered with EPERM


SECCOMP_TABLES = {
    # fork vfork execve execveat ptrace setsid setpgid mount umount2 pivot_root chroot unshare setns process_vm_readv
    # process_vm_writev bpf keyctl add_key request_key pidfd_open pidfd_send_signal pidfd_getfd perf_event_open
    # userfaultfd name_to_handle_at open_by_handle_at init_module finit_module delete_module kexec_load
    # kexec_file_load reboot swapon swapoff acct quotactl syslog open_tree move_mount fsopen fsconfig fsmount fspick
    # mount_setattr io_uring_setup io_uring_enter io_uring_register [iopl ioperm]
    "x86_64": SyscallTable(0xC000003E, 56, 435, 41, 62, 155, (
        57, 58, 59, 322, 101, 112, 109, 165, 166, 155, 161, 272, 308, 310, 311, 321, 250, 248, 249, 434, 424, 438,
        298, 323, 303, 304, 175, 313, 176, 246, 320, 169, 167, 168, 163, 179, 103, 428, 429, 430, 431, 432, 433, 442,
        425, 426, 427, 172, 173)),
    "aarch64": SyscallTable(0xC00000B7, 220, 435, 198, 129, 41, (
        221, 281, 117, 157, 154, 40, 39, 41, 51, 97, 268, 270, 271, 280, 219, 217, 218, 434, 424, 438, 241, 282, 264,
        265, 105, 273, 106, 104, 294, 142, 224, 225, 89, 60, 116, 428, 429, 430, 431, 432, 433, 442, 425, 426, 427)),
}


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 10.0  # wall-clock seconds per candidate, start-up and all calls together
    call_timeout: float = 5.0  # seconds one call of a candidate function may take
    memory_mb: int = 1024  # address space of the candidate
    max_processes: int = 16  # RLIMIT_NPROC of the candidate's uid (threads count)
    max_file_mb: int = 16  # largest file the candidate may write (stdout and stderr included)
    scratch_mb: int = 64  # size of its writable scratch dir (a tmpfs)
    max_open_files: int = 64


@dataclasses.dataclass(frozen=True)
class Problem:
    """One candidate in split mode: untrusted `solution`, trusted `tests` that call it through the supervisor."""

    solution: str  # runs in the candidate process (HumanEval: prompt + completion)
    tests: str  # runs in the supervisor (HumanEval: the test code and `check(entry_point)`)
    entry_point: str = ""  # always bound to the candidate's function of this name
    prelude: str = ""  # trusted code run before the tests in the supervisor (the prompt's helpers, MBPP set-up code)


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | signal
    seconds: float
    stdout: str  # the last OUTPUT_TAIL characters the candidate wrote
    stderr: str
    reason: str = ""  # why it failed, as the supervisor saw it


class SandboxUnavailable(RuntimeError):
    """The machine lacks confinement layers and the caller did not accept running without them."""


def enforcement() -> dict[str, str]:
    """What confinement this machine applies, layer by layer (from a probe run that executes no candidate code)."""
    return _launch("probe", Problem("", ""), SandboxLimits(), allow_weaker=True).layers


def run_program(item: Problem | str, limits: SandboxLimits = SandboxLimits(), allow_weaker: bool = False) -> Outcome:
    """Run one candidate confined.

    Args:
        item: a `Problem` (split mode: passes when the supervisor's tests pass), or a whole program with inline
            asserts (passes when it runs to its end; weaker, see the module docstring).
        allow_weaker: run even where some layer is missing (otherwise `SandboxUnavailable`).
    """
    if isinstance(item, str):
        return _launch("program", Problem(item, ""), limits, allow_weaker).outcome
    return _launch("calls", item, limits, allow_weaker).outcome


def run_programs(
    items: Sequence[Problem | str], limits: SandboxLimits = SandboxLimits(), workers: int = 2,
    allow_weaker: bool = False,
) -> list[Outcome]:
    """`run_program` for many candidates, `workers` at a time; order is kept."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda item: run_program(item, limits, allow_weaker), items))


# -- evaluator side -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Launch:
    outcome: Outcome
    layers: dict[str, str]


def _launch(mode: str, problem: Problem, limits: SandboxLimits, allow_weaker: bool) -> _Launch:
    """Start the supervisor on one candidate, wait for its verdict, and collect the candidate's output."""
    root = Path(tempfile.mkdtemp(prefix="dllm-peft-sandbox-"))
    try:
        (root / "work").mkdir()
        (root / "view").mkdir()
        untrusted = {"mode": mode, "solution": problem.solution, "limits": dataclasses.asdict(limits),
                     "root": str(root), "allow_weaker": allow_weaker}
        trusted = {"tests": problem.tests, "entry_point": problem.entry_point, "prelude": problem.prelude}
        started = time.monotonic()
        with open(root / "supervisor.log", "wb") as log:
            supervisor = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, cwd=root, env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8"},
                start_new_session=True, close_fds=True,
            )
            try:
                verdict_text, _ = supervisor.communicate(_frame(untrusted) + _frame(trusted),
                                                         timeout=limits.timeout + SUPERVISOR_GRACE)
            except subprocess.TimeoutExpired:
                verdict_text = b""
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(supervisor.pid, signal.SIGKILL)  # the candidate shares the group and cannot leave it
                supervisor.wait()
        seconds = time.monotonic() - started
        stdout, stderr = _tail(root / "stdout").rstrip(), _tail(root / "stderr")
        try:
            verdict = json.loads(verdict_text)
        except ValueError:
            log_tail = _tail(root / "supervisor.log")
            reason = "the supervisor overran the timeout" if not verdict_text else f"the supervisor failed: {log_tail}"
            status = "timeout" if not verdict_text else "failed"
            return _Launch(Outcome(False, status, seconds, stdout, stderr, reason), {})
        if verdict.get("refused"):
            raise SandboxUnavailable(
                f"This machine cannot apply the sandbox layers {', '.join(verdict['refused'])}; pass "
                f"allow_weaker=True to run candidates without them.")
        outcome = Outcome(verdict["passed"], verdict["status"], seconds, stdout, stderr, verdict["reason"])
        return _Launch(outcome, verdict["layers"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path) -> str:
    """The last OUTPUT_TAIL characters of a file that may be large (a candidate may print up to max_file_mb)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, path.stat().st_size - 4 * OUTPUT_TAIL))
            return stream.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
    except OSError:
        return ""


# -- the private protocol (length-prefixed JSON frames) -------------------------------------------------------------
class _ChannelClosed(BaseException):
    """The other end went away (the candidate exited or was killed)."""


class _CallTimeout(BaseException):
    """A deadline passed. A BaseException, so that no `except Exception` in the tests counts it as handled."""


def _frame(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack("<I", len(payload)) + payload


def _send(fd: int, message: dict) -> None:
    data = memoryview(_frame(message))
    try:
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        raise _ChannelClosed from None


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, remaining = [], size
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise _CallTimeout
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise _ChannelClosed
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None = None) -> dict:
    (size,) = struct.unpack("<I", _read_exactly(fd, 4, deadline))
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes is over the {MAX_MESSAGE}-byte limit")
    message = json.loads(_read_exactly(fd, size, deadline))
    if not isinstance(message, dict):
        raise ValueError("a message is not a JSON object")
    return message


class _SpecialFloats(ast.NodeTransformer):
    """`repr` writes nan and inf as bare names, which `ast.literal_eval` refuses; turn them into constants."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in SPECIAL_FLOATS:
            return ast.copy_location(ast.Constant(SPECIAL_FLOATS[node.id]), node)
        return node


def _parse_literal(text: str):
    """The plain value a `repr` denotes; ValueError (or SyntaxError, MemoryError, RecursionError) if there is none."""
    return ast.literal_eval(_SpecialFloats().visit(ast.parse(text, mode="eval")))


# -- supervisor side (runs as `python -I -B sandbox.py`; two frames on stdin) ---------------------------------------
class _Candidate:
    """The supervisor's end of the private pipes: calls a function of the candidate and parses the reply."""

    def __init__(self, requests: int, replies: int, deadline: float, call_timeout: float):
        self.requests, self.replies, self.deadline, self.call_timeout = requests, replies, deadline, call_timeout
        self.broken: BaseException | None = None  # after a timeout or a bad reply, a late answer must not be misread

    def call(self, name: str, arguments: tuple, keywords: dict):
        encoded = repr((arguments, keywords))
        try:
            _parse_literal(encoded)
        except Exception as error:
            raise TypeError(f"the arguments of {name} are not plain literals, so they cannot be sent") from error
        if self.broken is not None:
            raise self.broken
        call_id = secrets.token_hex(8)  # a reply written before the request was read cannot carry it
        try:
            _send(self.requests, {"call": name, "arguments": encoded, "id": call_id})
            reply = _receive(self.replies, min(self.deadline, time.monotonic() + self.call_timeout))
            if reply.get("id") != call_id:
                raise ValueError("a reply does not answer the call it follows")
        except (_CallTimeout, _ChannelClosed) as error:
            self.broken = error
            raise
        except ValueError as error:
            self.broken = _ChannelClosed(f"the candidate broke the protocol: {error}")
            raise self.broken from error
        if "error" in reply:
            raise _candidate_exception(reply["error"])
        try:
            return _parse_literal(str(reply["result"]))
        except Exception as error:
            shown = str(reply["result"])[:200]
            raise TypeError(f"{name} returned something that is not a plain literal: {shown}") from error

    def proxy(self, name: str):
        def call_candidate(*arguments, **keywords):
            return self.call(name, arguments, keywords)

        call_candidate.__name__ = call_candidate.__qualname__ = name
        return call_candidate


def _candidate_exception(error) -> Exception:
    """The exception to raise in the tests for one the candidate reported: a builtin type where it names one."""
    kind, message = (str(part)[:500] for part in (list(error) + ["", ""])[:2])
    exception_type = getattr(builtins, kind, None)
    if isinstance(exception_type, type) and issubclass(exception_type, Exception):
        with contextlib.suppress(Exception):
            return exception_type(message)
    return RuntimeError(f"{kind}: {message}")


def _supervisor_main() -> None:
    # Only the first frame (no tests in it) is read before the fork: the candidate's memory never holds the tests.
    untrusted = json.loads(_read_exactly(0, struct.unpack("<I", _read_exactly(0, 4, None))[0], None))
    limits = untrusted["limits"]
    deadline = time.monotonic() + limits["timeout"]
    root = untrusted["root"]
    work = os.path.join(root, "work")
    capture = [os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
               for name in ("stdout", "stderr")]
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)  # to write the candidate's id maps once /proc is hidden
    layers = {layer: "missing" for layer in REQUIRED_LAYERS}
    own_user_namespace = _enter_namespaces(layers)
    outer_id = _outer_candidate_id(own_user_namespace)
    if layers["pid"] != "missing":
        layers["filesystem"] = _enter_view(root, work, limits["scratch_mb"], outer_id)
    if layers["filesystem"].startswith("missing"):
        with contextlib.suppress(OSError):
            os.chown(work, *outer_id)  # the candidate writes into the host directory instead
    requests, replies = os.pipe(), os.pipe()
    candidate = os.fork()
    if candidate == 0:
        try:
            _candidate_main(untrusted, layers, capture, work, requests[0], replies[1])
        finally:
            os._exit(70)
    os.close(requests[0])
    os.close(replies[1])
    verdict = _judge(untrusted, candidate, proc, outer_id, requests[1], replies[0], deadline, limits)
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(candidate, signal.SIGKILL)  # pid 1 of its namespace: everything it started dies with it
        os.waitpid(candidate, 0)
    os.write(1, json.dumps(verdict).encode())


def _judge(untrusted: dict, candidate: int, proc: int, outer_id: tuple[int, int], requests: int, replies: int,
           deadline: float, limits: dict) -> dict:
    """Set the candidate's ids, read the layers it reports, then run the tests against it: the verdict."""
    layers: dict[str, str] = {}

    def verdict(passed: bool, status: str, reason: str) -> dict:
        return {"passed": passed, "status": status, "reason": reason, "layers": layers}

    try:
        if _receive(replies, deadline).get("unshared"):
            _write_id_maps(proc, candidate, outer_id)
        os.close(proc)
        # Dumpable 0 before the candidate can run anything: no ptrace, no /proc/<pid>/mem of the supervisor.
        _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        _send(requests, {"mapped": True})
        layers.update(_receive(replies, deadline)["layers"])
        trusted = json.loads(_read_exactly(0, struct.unpack("<I", _read_exactly(0, 4, None))[0], None))
        missing = [layer for layer in REQUIRED_LAYERS if layers.get(layer, "missing").startswith("missing")]
        if missing and not untrusted["allow_weaker"]:
            return {**verdict(False, "failed", "refused"), "refused": missing}
        if untrusted["mode"] == "probe":
            return verdict(False, "failed", "probe")
        started = _receive(replies, deadline)
        if "error" in started:
            return verdict(False, "failed", "the solution raised {}: {}".format(*started["error"]))
        if untrusted["mode"] == "program":
            passed = started.get("done") is True
            return verdict(passed, "passed" if passed else "failed", "" if passed else "did not run to its end")
        namespace = _test_namespace(trusted, started.get("ready"),
                                    _Candidate(requests, replies, deadline, limits["call_timeout"]))
        with contextlib.redirect_stdout(sys.stderr):
            exec(compile(trusted["tests"], "tests.py", "exec"), namespace)
        return verdict(True, "passed", "")
    except _CallTimeout:
        return verdict(False, "timeout", "the candidate did not answer in time")
    except _ChannelClosed as error:
        if error.args:
            return verdict(False, "failed", str(error))
        status = _exit_status(candidate, deadline)
        if status is None:
            return verdict(False, "timeout", "the candidate closed its pipe and went on running")
        if os.WIFSIGNALED(status):
            return verdict(False, "signal", f"the candidate was killed by signal {os.WTERMSIG(status)}")
        return verdict(False, "failed", f"the candidate exited with status {os.waitstatus_to_exitcode(status)}")
    except Exception as error:
        return verdict(False, "failed", "".join(traceback.format_exception_only(error)).strip()[-OUTPUT_TAIL:])


def _exit_status(candidate: int, deadline: float) -> int | None:
    """The candidate's wait status once it has exited, or None if it still runs at the deadline."""
    while True:
        pid, status = os.waitpid(candidate, os.WNOHANG)
        if pid:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _test_namespace(trusted: dict, names, candidate: _Candidate) -> dict:
    """Globals for the tests: the trusted prelude, then proxies for the names the tests take from the solution.

    A name the tests use without defining is taken from the solution: a proxy for a function or class, the same
    stdlib module for a module (MBPP asserts use the solution's `import math`). Builtin names are never taken, or a
    solution could define its own `len` for the tests to call.
    """
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(trusted["prelude"], "prelude.py", "exec"), namespace)
    kinds = names if isinstance(names, dict) else {}
    used = {node.id for node in ast.walk(ast.parse(trusted["tests"])) if isinstance(node, ast.Name)}
    for name in sorted(used - set(namespace) - set(dir(builtins))):
        kind = str(kinds.get(name, ""))
        module = kind.removeprefix("module:")
        if kind.startswith("module:") and module.partition(".")[0] in sys.stdlib_module_names:
            namespace[name] = importlib.import_module(module)
        else:
            namespace[name] = candidate.proxy(name)
    if trusted["entry_point"]:
        namespace[trusted["entry_point"]] = candidate.proxy(trusted["entry_point"])
    return namespace


def _enter_namespaces(layers: dict[str, str]) -> bool:
    """New mount, network, IPC and PID namespaces (for the children); True when that took an own user namespace."""
    libc = _libc()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID
    own_user_namespace = False
    if libc.unshare(flags) != 0:
        euid, egid = os.geteuid(), os.getegid()
        if libc.unshare(CLONE_NEWUSER) != 0:
            return False
        own_user_namespace = True
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {euid} 1"), ("gid_map", f"0 {egid} 1")):
            Path(f"/proc/self/{name}").write_text(text)
        if libc.unshare(flags) != 0:
            return own_user_namespace
    layers["pid"] = "own PID namespace, the candidate is its pid 1"
    layers["network"] = "no interfaces (network namespace)"
    return own_user_namespace


def _outer_candidate_id(own_user_namespace: bool) -> tuple[int, int]:
    """The uid and gid (as the supervisor sees them) that the candidate's namespace maps its `CANDIDATE_ID` to.

    With root's power over ids, a per-run id nobody else has (so `RLIMIT_NPROC` and file ownership are its own);
    in an own user namespace only the supervisor's id exists, which outside is the unprivileged user that started it.
    """
    if own_user_namespace or os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    private = 0x60000000 + os.getpid()
    ids = []
    for name in ("uid_map", "gid_map"):
        ranges = [tuple(map(int, line.split())) for line in Path(f"/proc/self/{name}").read_text().splitlines()]
        ids.append(private if any(start <= private < start + count for start, _, count in ranges) else 65534)
    return ids[0], ids[1]


def _write_id_maps(proc: int, candidate: int, outer_id: tuple[int, int]) -> None:
    for name, outer in (("uid_map", outer_id[0]), ("gid_map", outer_id[1])):
        fd = os.open(f"{candidate}/{name}", os.O_WRONLY, dir_fd=proc)
        try:
            os.write(fd, f"{CANDIDATE_ID} {outer} 1".encode())
        finally:
            os.close(fd)


def _read_only_paths() -> list[str]:
    """What the view shows: the Python installation and the system's programs and libraries, nothing else."""
    wanted = ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
              sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    wanted += [os.path.realpath(path) for path in wanted]
    kept: list[str] = []
    for path in sorted(set(wanted), key=len):
        if os.path.lexists(path) and not any(path.startswith(parent + "/") for parent in kept):
            kept.append(path)
    return kept


def _enter_view(root: str, work: str, scratch_mb: int, outer_id: tuple[int, int]) -> str:
    """`pivot_root` into a read-only view with a writable scratch tmpfs at `work`; the layer's report."""
    view = os.path.join(root, "view")
    try:
        _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below may propagate back to the host
        _mount("tmpfs", view, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path in _read_only_paths():
            target = view + path
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(path):
                os.symlink(os.readlink(path), target)
            else:
                os.makedirs(target, exist_ok=True)
                _mount(path, target, None, MS_BIND | MS_REC)
        os.makedirs(view + "/dev")
        _mount("tmpfs", view + "/dev", "tmpfs", MS_NOSUID, "size=16k,mode=0755")
        for device in ("null", "zero", "full", "random", "urandom"):
            Path(f"{view}/dev/{device}").touch()
            _mount(f"/dev/{device}", f"{view}/dev/{device}", None, MS_BIND)
        os.makedirs(view + "/proc")  # left empty: the candidate's processes are all it could see anyway
        os.makedirs(view + work)
        _mount("tmpfs", view + work, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={scratch_mb}m,nr_inodes=4096,mode=0700,uid={outer_id[0]},gid={outer_id[1]}")
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            points = [line.split()[4].encode().decode("unicode_escape") for line in table]
        for point in points:
            if (point == view or point.startswith(view + "/")) and point != view + work:
                _remount_read_only(point)
        os.chdir(view)
        _syscall(SECCOMP_TABLES[platform.machine()].pivot_root, b".", b".")  # the old root now lies on top ...
        if _libc().umount2(b".", MNT_DETACH) != 0:  # ... and is detached here
            raise OSError("umount2 of the old root failed")
        os.chdir(work)
    except (OSError, KeyError) as error:
        return f"missing ({error})"
    return f"read-only minimal view (pivot_root), scratch tmpfs of {scratch_mb} MB, no /etc, /home, /root or /proc"


def _mount(source: str, target: str, kind: str | None, flags: int, options: str | None = None) -> None:
    def encode(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if _libc().mount(encode(source), encode(target), encode(kind), flags, encode(options)) != 0:
        raise OSError(f"mount of {target} failed: {os.strerror(_errno())}")


def _remount_read_only(point: str) -> None:
    # A remount may not drop flags that a less privileged namespace inherited locked (nosuid, nodev, noexec).
    kept = os.statvfs(point).f_flag & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC)
    _mount("none", point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def _syscall(number: int, *arguments) -> None:
    if _libc().syscall(number, *arguments) != 0:
        raise OSError(f"system call {number} failed: {os.strerror(_errno())}")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


# -- candidate side (forked from the supervisor; confines itself before any candidate code runs) --------------------
def _candidate_main(untrusted: dict, layers: dict[str, str], capture: list[int], work: str, requests: int,
                    replies: int) -> None:
    layers = dict(layers)
    limits = untrusted["limits"]
    libc = _libc()
    unshared = layers["pid"] != "missing" and libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0
    _send(replies, {"unshared": unshared})
    _receive(requests)  # the supervisor has written the id maps
    layers["user"] = _drop_privileges(unshared)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # set after the id change, which clears it
    layers["limits"] = _apply_limits(limits)
    layers["seccomp"] = _install_seccomp()
    layers["supervisor"] = "separate process, not dumpable, outside the candidate's PID namespace"
    if layers["pid"] != "missing":
        layers["pid"] = layers["pid"] if os.getpid() == 1 else "missing (not pid 1)"
    for fd, target in ((os.open(os.devnull, os.O_RDONLY), 0), (capture[0], 1), (capture[1], 2)):
        os.dup2(fd, target)
    os.closerange(3, requests)
    os.closerange(requests + 1, replies)
    os.closerange(replies + 1, 1 << 16)
    os.environ.clear()
    os.environ.update({"PATH": CLEAN_PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"})
    os.chdir(work)
    _send(replies, {"layers": layers})
    missing = [layer for layer in REQUIRED_LAYERS if layers[layer].startswith("missing")]
    if untrusted["mode"] == "probe" or (missing and not untrusted["allow_weaker"]):
        os._exit(0)
    _run_candidate(untrusted["mode"], untrusted["solution"], requests, replies)


def _drop_privileges(unshared: bool) -> str:
    """Become `CANDIDATE_ID` in the new user namespace and give up every capability for good."""
    import ctypes

    if not unshared:
        return "missing (no user namespace: the candidate keeps the evaluator's user)"
    with contextlib.suppress(PermissionError):
        os.setgroups([])  # refused where the namespace denies setgroups: then the groups were unprivileged anyway
    os.setresgid(CANDIDATE_ID, CANDIDATE_ID, CANDIDATE_ID)
    os.setresuid(CANDIDATE_ID, CANDIDATE_ID, CANDIDATE_ID)
    libc = _libc()
    for capability in range(64):  # past the last one the kernel answers EINVAL
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    no_capabilities = (ctypes.c_uint32 * 6)()
    if libc.capset(header, no_capabilities) != 0:
        return f"missing (capset failed: {os.strerror(_errno())})"
    held = (ctypes.c_uint32 * 6)()
    libc.capget(header, held)
    if any(held) or os.getuid() != CANDIDATE_ID:
        return "missing (capabilities remain)"
    return f"uid {CANDIDATE_ID} in an own user namespace, no capabilities"


def _apply_limits(limits: dict) -> str:
    import resource

    megabyte = 1024 * 1024
    cpu_seconds = math.ceil(limits["timeout"]) + 1
    for kind, value in {
        resource.RLIMIT_AS: limits["memory_mb"] * megabyte,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_NPROC: limits["max_processes"],
        resource.RLIMIT_FSIZE: limits["max_file_mb"] * megabyte,
        resource.RLIMIT_NOFILE: limits["max_open_files"],
        resource.RLIMIT_CORE: 0,
    }.items():
        resource.setrlimit(kind, (value, value))
    return (f"memory {limits['memory_mb']} MB, cpu {cpu_seconds} s, processes {limits['max_processes']}, "
            f"file size {limits['max_file_mb']} MB, open files {limits['max_open_files']}")


def _install_seccomp() -> str:
    import ctypes

    table = SECCOMP_TABLES.get(platform.machine())
    if table is None:
        return f"missing (no system call table for {platform.machine()})"

    def op(code: int, jump_true: int, jump_false: int, value: int) -> bytes:
        return struct.pack("HBBI", code, jump_true, jump_false, value)

    program = [
        op(BPF_LOAD, 0, 0, 4), op(BPF_JEQ, 1, 0, table.audit_arch), op(BPF_RET, 0, 0, RET_EPERM),  # another ABI
        op(BPF_LOAD, 0, 0, 0), op(BPF_JGE, 0, 1, 0x40000000), op(BPF_RET, 0, 0, RET_EPERM),  # x32 numbers
        op(BPF_JEQ, 0, 1, table.clone3), op(BPF_RET, 0, 0, RET_ENOSYS),  # glibc then falls back to clone
        # clone: threads only (its flags are the low half of the first argument, at offset 16)
        op(BPF_JEQ, 0, 4, table.clone), op(BPF_LOAD, 0, 0, 16), op(BPF_JSET, 0, 1, CLONE_THREAD),
        op(BPF_RET, 0, 0, RET_ALLOW), op(BPF_RET, 0, 0, RET_EPERM),
        # socket: AF_UNIX only (abstract names are per network namespace, so these reach nothing outside)
        op(BPF_JEQ, 0, 4, table.socket), op(BPF_LOAD, 0, 0, 16), op(BPF_JEQ, 0, 1, AF_UNIX),
        op(BPF_RET, 0, 0, RET_ALLOW), op(BPF_RET, 0, 0, RET_EPERM),
        # kill: positive pids only; 0 and negative ones name process groups, and the supervisor's group is its own
        op(BPF_JEQ, 0, 5, table.kill), op(BPF_LOAD, 0, 0, 16), op(BPF_JEQ, 2, 0, 0), op(BPF_JGE, 1, 0, 0x80000000),
        op(BPF_RET, 0, 0, RET_ALLOW), op(BPF_RET, 0, 0, RET_EPERM),
    ]
    for number in table.refused:
        program += [op(BPF_JEQ, 0, 1, number), op(BPF_RET, 0, 0, RET_EPERM)]
    program.append(op(BPF_RET, 0, 0, RET_ALLOW))
    code = ctypes.create_string_buffer(b"".join(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
        PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(SockFprog(len(program), ctypes.addressof(code))), 0, 0
    ) != 0:
        return f"missing (seccomp refused: {os.strerror(_errno())})"
    return (f"on, no_new_privs; {len(table.refused)} calls refused, no new processes, AF_UNIX sockets only, "
            f"kill of single pids only")


def _run_candidate(mode: str, solution: str, requests: int, replies: int) -> None:
    """Run the solution, then (split mode) answer calls until the supervisor closes the pipe. Never returns."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as error:  # SystemExit too: exiting before the end is no success
        traceback.print_exc()
        _flush_output()
        _send(replies, {"error": [type(error).__name__, str(error)[:500]]})
        os._exit(1)
    _flush_output()
    if mode == "program":
        _send(replies, {"done": True})
        os._exit(0)
    _send(replies, {"ready": _describe(namespace)})
    while True:
        try:
            message = _receive(requests)
        except _ChannelClosed:
            os._exit(0)
        try:
            arguments, keywords = _parse_literal(message["arguments"])
            function = namespace.get(message["call"])
            if function is None:
                raise NameError(f"name {message['call']!r} is not defined")
            reply = {"result": repr(function(*arguments, **keywords))}
        except BaseException as error:
            traceback.print_exc()
            reply = {"error": [type(error).__name__, str(error)[:500]]}
        _flush_output()
        _send(replies, {**reply, "id": message.get("id")})


def _describe(namespace: dict) -> dict[str, str]:
    """What each top-level name of the solution is, for the supervisor to bind: a function, or a module's name."""
    kinds = {}
    for name, value in list(namespace.items())[:1000]:
        if isinstance(value, type(sys)):
            kinds[name] = f"module:{value.__name__}"
        elif callable(value):
            kinds[name] = "function"
    return kinds


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a full file (RLIMIT_FSIZE) must not stop the reply
            stream.flush()


if __name__ == "__main__":
    _supervisor_main()
