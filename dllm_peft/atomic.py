"""Atomic writes: a crash leaves either the old file or the new one, never half of one.

Each file is written beside its destination, flushed, and renamed into place (`os.replace` is atomic on POSIX).
This module imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        save_file(contiguous, str(staging / path.name), metadata=metadata)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
