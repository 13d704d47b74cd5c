"""Run untrusted generated code: one confined subprocess per candidate program, with a wall-clock timeout.

Layers of confinement, each applied where the OS allows it (`enforcement()` reports which ones are active here):

1. a fresh temporary directory as the working directory, `HOME` and `TMPDIR`, deleted afterwards;
2. a new session: on timeout, and whenever the program ends, its whole process group is killed;
3. namespaces (as root, or through a user namespace): a new network namespace with no usable interface, and a
   private mount namespace in which every mount is read-only except the temporary directory;
4. a seccomp filter: threads may be created, processes may not (fork, vfork, clone without CLONE_THREAD, execve);
   this bounds fork bombs also for root, for whom the kernel does not enforce `RLIMIT_NPROC`;
5. resource limits: `RLIMIT_AS` (memory), `RLIMIT_CPU`, `RLIMIT_NPROC`, `RLIMIT_FSIZE`, `RLIMIT_NOFILE`, no core
   files;
6. an audit hook (PEP 578) refuses sockets, process creation, signals, ctypes, changes to resource limits, and any
   write, deletion or rename outside the temporary directory. It is a Python-level guard (native code could get
   past it, hence ctypes is refused and the OS layers above exist).

The child is `python -I` running this very file as a script (stdlib imports only, so it needs no package on the
path). It confines itself right before `exec`ing the candidate: `preexec_fn` would do the same in the forked image of
the parent, but it is unsafe in a threaded process, and candidates run from a thread pool.

A program passes when it runs to its end and exits normally: the child then prints a random marker it received on
stdin, so `sys.exit(0)` or `os._exit(0)` before the tests ran count as failures.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUTPUT_TAIL = 2000

# Linux constants (sched.h, mount.h, prctl.h, seccomp.h, filter.h)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x00020000, 0x10000000, 0x40000000, 0x00010000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
BPF_LOAD, BPF_JEQ, BPF_JGE, BPF_JSET, BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06  # ld [k]; jeq/jge/jset #k; ret #k
RET_ALLOW, RET_EPERM, RET_ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
# machine: (AUDIT_ARCH, clone, clone3, syscalls refused outright: fork, vfork, execve, execveat where they exist)
SECCOMP_ARCHES = {"x86_64": (0xC000003E, 56, 435, (57, 58, 59, 322)), "aarch64": (0xC00000B7, 220, 435, (221, 281))}


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 10.0  # wall-clock seconds per program
    memory_mb: int = 1024  # address space
    max_processes: int = 16  # RLIMIT_NPROC (counts threads too)
    max_file_mb: int = 16  # largest file the program may write (stdout and stderr included)
    max_open_files: int = 64
    block_risky_calls: bool = True  # the audit hook (layer 6); off only to test the OS layers alone


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | signal
    seconds: float
    stdout: str  # the last OUTPUT_TAIL characters (without the completion marker)
    stderr: str


def enforcement() -> dict[str, str]:
    """What confinement this machine applies, layer by layer (from a probe run of the child)."""
    probe = _spawn("", SandboxLimits(), probe=True)
    return json.loads(probe.stdout) if probe.stdout.strip() else {"probe": "failed"}


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> Outcome:
    """Run one Python program confined; it passes when it exits normally after running to its end."""
    run = _spawn(source, limits)
    if run.timed_out:
        return Outcome(False, "timeout", run.seconds, run.stdout, run.stderr)
    if run.returncode < 0:
        return Outcome(False, "signal", run.seconds, run.stdout, run.stderr + f"\nkilled by signal {-run.returncode}")
    passed = run.returncode == 0 and run.completed
    return Outcome(passed, "passed" if passed else "failed", run.seconds, run.stdout, run.stderr)


def run_programs(sources: list[str], limits: SandboxLimits = SandboxLimits(), workers: int = 2) -> list[Outcome]:
    """`run_program` for many programs, `workers` at a time; order is kept."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))


# -- parent side ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Run:
    returncode: int
    timed_out: bool
    completed: bool  # the child printed the random marker that follows a program run to its end
    stdout: str  # tail, without the marker
    stderr: str  # tail
    seconds: float


def _spawn(source: str, limits: SandboxLimits, probe: bool = False) -> _Run:
    """Run the confined child on `source` and collect what happened."""
    root = Path(tempfile.mkdtemp(prefix="dllm-peft-sandbox-"))
    try:
        work = root / "work"
        work.mkdir()
        program = root / "program.py"
        program.write_text(source, encoding="utf-8")
        marker = secrets.token_hex(16)
        settings = {**dataclasses.asdict(limits), "program": str(program), "work": str(work), "marker": marker,
                    "probe": probe}
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        started = time.monotonic()
        with open(root / "stdout", "wb") as stdout, open(root / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.abspath(__file__)],
                stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, cwd=work, env=environment,
                start_new_session=True, close_fds=True,
            )
            try:
                process.communicate(json.dumps(settings).encode(), timeout=limits.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process.pid)  # also reaps anything the program left behind in its group
                process.wait()
        seconds = time.monotonic() - started
        output = (root / "stdout").read_bytes().decode("utf-8", "replace").rstrip()
        completed = output.endswith(marker)
        output = output[: -len(marker)].rstrip("\n") if completed else output
        errors = (root / "stderr").read_bytes().decode("utf-8", "replace")
        return _Run(process.returncode, timed_out, completed, output[-OUTPUT_TAIL:], errors[-OUTPUT_TAIL:], seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- child side (runs as `python -I sandbox.py`, settings on stdin) -------------------------------------------------
def _child_main() -> None:
    settings = json.loads(sys.stdin.read())
    sys.stdin.close()
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
    sys.dont_write_bytecode = True
    source = Path(settings["program"]).read_text(encoding="utf-8")
    report = {"filesystem": "writable", "network": "open"}
    report.update(_enter_namespaces(settings["work"]))
    report["processes"] = _forbid_new_processes()
    report["limits"] = _apply_limits(settings)
    report["audit_hook"] = "on" if settings["block_risky_calls"] else "off"
    if settings["block_risky_calls"]:
        sys.addaudithook(_audit_guard(settings["work"]))
    if settings["probe"]:
        print(json.dumps(report))
        return
    marker = settings.pop("marker")
    del settings
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    os.write(1, f"\n{marker}\n".encode())


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _enter_namespaces(work: str) -> dict[str, str]:
    """A new network namespace (no interfaces but a down loopback) and a mount namespace where all is read-only."""
    _, libc = _libc()
    if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        return {}
    report = {"network": "none (network namespace)"}
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:  # changes must not leak to the host
        return report
    work_path = os.fsencode(os.path.realpath(work))
    if libc.mount(work_path, work_path, None, MS_BIND, None) != 0:  # the temp dir becomes its own, writable mount
        return report
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        points = [line.split()[4].encode().decode("unicode_escape") for line in table]
    failed = [point for point in points if os.fsencode(point) != work_path and libc.mount(
        None, os.fsencode(point), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0]
    os.chdir(work)  # the old working directory belongs to the read-only mount below the new one
    if "/" not in failed:
        report["filesystem"] = "read-only except the temp dir" + (f" ({len(failed)} mounts left as they were)"
                                                                   if failed else "")
    return report


def _forbid_new_processes() -> str:
    """A seccomp filter: threads may be created, processes may not (fork, vfork, clone without CLONE_THREAD, exec)."""
    import platform
    import struct

    if platform.machine() not in SECCOMP_ARCHES:
        return "not confined (no seccomp table for this machine)"
    arch, clone, clone3, refused = SECCOMP_ARCHES[platform.machine()]

    def op(code: int, jump_true: int, jump_false: int, value: int) -> bytes:
        return struct.pack("HBBI", code, jump_true, jump_false, value)

    program = [
        op(BPF_LOAD, 0, 0, 4), op(BPF_JEQ, 1, 0, arch), op(BPF_RET, 0, 0, RET_EPERM),  # another ABI: refuse
        op(BPF_LOAD, 0, 0, 0), op(BPF_JGE, 0, 1, 0x40000000), op(BPF_RET, 0, 0, RET_EPERM),  # x32 numbers
        op(BPF_JEQ, 0, 1, clone3), op(BPF_RET, 0, 0, RET_ENOSYS),  # glibc then falls back to clone
        op(BPF_JEQ, 0, 4, clone), op(BPF_LOAD, 0, 0, 16), op(BPF_JSET, 0, 1, CLONE_THREAD),
        op(BPF_RET, 0, 0, RET_ALLOW), op(BPF_RET, 0, 0, RET_EPERM),
    ]
    for number in refused:
        program += [op(BPF_JEQ, 0, 1, number), op(BPF_RET, 0, 0, RET_EPERM)]
    program.append(op(BPF_RET, 0, 0, RET_ALLOW))
    ctypes, libc = _libc()
    code = ctypes.create_string_buffer(b"".join(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    filter_program = SockFprog(len(program), ctypes.addressof(code))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
        PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(filter_program), 0, 0
    ) != 0:
        return "RLIMIT_NPROC only (seccomp refused)"
    return "no new processes (seccomp)"


def _apply_limits(settings: dict) -> str:
    import resource

    megabyte = 1024 * 1024
    cpu_seconds = math.ceil(settings["timeout"]) + 1
    limits = {
        resource.RLIMIT_AS: settings["memory_mb"] * megabyte,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_NPROC: settings["max_processes"],
        resource.RLIMIT_FSIZE: settings["max_file_mb"] * megabyte,
        resource.RLIMIT_NOFILE: settings["max_open_files"],
        resource.RLIMIT_CORE: 0,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))
    return (f"memory {settings['memory_mb']} MB, cpu {cpu_seconds} s, processes {settings['max_processes']}"
            f"{' (not enforced for root)' if os.geteuid() == 0 else ''}, file size {settings['max_file_mb']} MB, "
            f"open files {settings['max_open_files']}")


REFUSED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "resource.setrlimit", "resource.prlimit",
    "os.chroot", "os.setuid", "os.setgid",
})
PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate", "os.chmod", "os.chown",
                         "os.symlink", "os.link", "os.mkdir", "os.utime", "shutil.move", "shutil.copyfile"})
TWO_PATH_EVENTS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.move", "shutil.copyfile"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _audit_guard(work: str):
    """An audit hook that refuses risky calls and file changes outside `work`."""
    allowed_root = os.path.realpath(work)

    def inside(path) -> bool:
        if isinstance(path, int):  # an already open file descriptor
            return True
        resolved = os.path.realpath(os.fsdecode(path))
        return resolved == allowed_root or resolved.startswith(allowed_root + os.sep)

    def guard(event: str, args: tuple) -> None:
        if event in REFUSED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args[2] is not None and args[2] & WRITE_FLAGS and not inside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} outside the working directory is not allowed")
        if event in PATH_EVENTS:
            paths = args[:2] if event in TWO_PATH_EVENTS else args[:1]
            for path in paths:
                if isinstance(path, (str, bytes, os.PathLike, int)) and not inside(path):
                    raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory is not allowed")

    return guard


if __name__ == "__main__":
    _child_main()
