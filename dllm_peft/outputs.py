"""The one "prepare output" rule of every command that writes (train, merge, export, sample, eval, inspect --plot).

1. Check the output path before any work: not under a file, not inside /proc, /sys or /dev, of the right kind (a
   file where a file is written, a directory where a directory is), and writable (access(2) on the nearest existing
   directory: permissions and read-only mounts, nothing written).
2. `--overwrite` replaces only the files the command itself writes. A directory output carries a manifest
   (`.dllm-peft-files.json`) naming the entries the last run of the command wrote; the new result is written into a
   staging directory beside the output and moved in entry by entry only once it is complete, then the entries of the
   previous result that the new one lacks are removed. Files the command never wrote are left alone.
3. Storage failures while writing (disk full, read-only, permission) are one sentence (`storage_errors`), not a
   traceback, and leave what was there before.

A leaf module: it imports only `errors` and `atomic`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .atomic import atomic_write_bytes, make_staging_dir
from .errors import DllmPeftError

MANIFEST = ".dllm-peft-files.json"
SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "an input/output error",
}


def storage_reason(error: BaseException) -> str | None:
    """Why a write failed, when `error` is a storage failure (disk full, read-only, permission); None otherwise.

    safetensors reports a full disk as `SafetensorError("... No space left on device ...")`, not as an OSError.
    """
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return STORAGE_ERRNOS[error.errno]
    if "No space left" in str(error):
        return STORAGE_ERRNOS[errno.ENOSPC]
    return None


@contextlib.contextmanager
def storage_errors(what: str, advice: str) -> Iterator[None]:
    """Turn a storage failure inside the block into one sentence: f"{what} failed: {reason}; {advice}"."""
    try:
        yield
    except DllmPeftError:
        raise
    except Exception as error:
        reason = storage_reason(error)
        if reason is None:
            raise
        raise DllmPeftError(f"{what} failed: {reason}; {advice}") from None


def check_output_path(path: str | Path, flag: str = "--output", kind: str = "directory") -> Path:
    """Refuse an output path the command could not write, before any work (see the module docstring). Returns it.

    Args:
        kind: "directory" (the command writes files into it) or "file" (the command writes this file).
    """
    output = Path(path)
    absolute = Path(os.path.abspath(output))
    for root in SYSTEM_ROOTS:
        if absolute == root or root in absolute.parents:
            raise DllmPeftError(f"{flag} {str(path)!r} lies inside {root}, which holds no user files; choose another")
    existing = absolute
    while not existing.exists():  # the nearest existing ancestor: the command creates the rest
        existing = existing.parent
    if existing != absolute and not existing.is_dir():
        raise DllmPeftError(f"{flag} {str(path)!r} lies under the file {str(existing)!r}; choose a path in a directory")
    if existing == absolute:
        if kind == "directory" and not absolute.is_dir():
            raise DllmPeftError(f"{flag} {str(path)!r} is a file; name a directory")
        if kind == "file" and absolute.is_dir():
            raise DllmPeftError(f"{flag} {str(path)!r} is a directory; name a file")
        if kind == "file":
            existing = absolute.parent
    _probe(existing, flag, path)
    return output


def _probe(directory: Path, flag: str, path: str | Path) -> None:
    """access(2) answers for this process, read-only mounts included (EROFS), without writing anything."""
    if not os.access(directory, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(directory) else "permission denied"
        raise DllmPeftError(f"cannot write {flag} {str(path)!r} ({reason} in {str(directory)!r}); choose another")


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def owned_entries(output: Path) -> set[str]:
    """The entries of `output` that the command wrote last time (its manifest); empty when there is none."""
    try:
        names = json.loads((output / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name in names if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}


def check_directory_output(output: Path, overwrite: bool, protected: list[Path], command: str) -> None:
    """The output rule for a command that writes a directory (merge, export): checked before any work.

    Refuses an output that would replace one of `protected` (its inputs), a path that cannot be written, and a
    non-empty directory unless `overwrite` (which then replaces only the entries `command` writes).
    """
    target = output.resolve()
    for path in protected:
        if path.exists() and (target == path.resolve() or target in path.resolve().parents):
            raise DllmPeftError(f"--output {str(output)!r} would replace the input {str(path)!r}; choose another")
    check_output_path(output, "--output", "directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DllmPeftError(
            f"--output {str(output)!r} is not empty; pass --overwrite (it replaces only the files {command} writes) "
            "or choose another directory"
        )


@contextlib.contextmanager
def replaced_when_complete(output: Path, command: str) -> Iterator[Path]:
    """A staging directory the block writes the whole result into; afterwards the result replaces the entries of
    `output` that `command` owns (see the module docstring). A failure in the block leaves `output` as it was.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    for leftover in output.parent.glob(f".{output.name}.*.staging"):  # a run killed before its swap
        shutil.rmtree(leftover, ignore_errors=True)
    advice = f"{output} keeps what it held before; free space or choose another --output"
    with storage_errors(f"writing the {command} result", advice):
        staging = make_staging_dir(output.parent, prefix=f".{output.name}.", suffix=".staging")  # umask mode
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            previous = owned_entries(output)
            written = sorted(entry.name for entry in staging.iterdir())
            output.mkdir(exist_ok=True)
            for name in written:
                _remove(output / name)  # os.replace cannot put a directory over a non-empty one
                os.replace(staging / name, output / name)
            for name in previous - set(written) - {MANIFEST}:
                _remove(output / name)
            manifest = {"command": command, "files": written}
            atomic_write_bytes(output / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_file_outputs(named: Path, companions: list[Path], flag: str, marker: str) -> None:
    """The output rule for a command that writes the file `named` and, beside it, `companions` the user did not name.

    `named` may be replaced (the user chose it). A companion that exists is replaced only when it was written by the
    same command, i.e. it contains `marker`; otherwise the command refuses before any work.
    """
    check_output_path(named, flag, "file")
    for companion in companions:
        if companion.is_dir():
            raise DllmPeftError(f"{flag} {str(named)!r} would also write {str(companion)!r}, a directory; rename one")
        if companion.exists() and not _holds(companion, marker):
            raise DllmPeftError(
                f"{flag} {str(named)!r} would also write {str(companion)!r}, which exists and was not written by "
                "dllm-peft; move it or choose another " + flag
            )


def _holds(path: Path, marker: str) -> bool:
    try:
        with path.open("rb") as stream:
            return marker.encode() in stream.read(1 << 20)  # results tables are small
    except OSError:
        return False
