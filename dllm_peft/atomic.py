"""Atomic writes: a crash leaves either the old file or the new one, never half of one.

Each file is written beside its destination, flushed, and renamed into place (`os.replace` is atomic on POSIX).
`tempfile` creates its files and folders private (0600 / 0700); what we write ends with the modes a plain `open` or
`mkdir` would give under the user's umask (0644 / 0755 on the usual 022), so a collaborator can read the adapters,
results and merged models. This module imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the writer of tensors only: `--help` imports this module too
    import torch


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def make_staging_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A fresh folder inside `parent` (`tempfile.mkdtemp`) with the mode `mkdir` would give it: 0o777 less the umask.

    Written into and then renamed into place, it becomes a checkpoint or a merged model that others may read.
    """
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, file_mode())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write `tensors` as safetensors at `path`, atomically.

    The file is written inside a private hidden directory beside `path` (`.{name}.*.tmp`) and renamed out of it:
    safetensors writes through a temporary file of its own (`.tmpXXXXXX`), which a kill would otherwise leave beside
    the user's files under a name nobody can tell apart; here it can only be inside the directory, removed whole.
    """
    from safetensors.torch import save_file  # torch only when tensors are written

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))  # file keeps umask mode
    try:
        contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        save_file(contiguous, str(staging / path.name), metadata=metadata)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
