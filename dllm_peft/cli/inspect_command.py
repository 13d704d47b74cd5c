"""`dllm-peft inspect`: what an adapter holds and how its update varies with the noise level."""

from __future__ import annotations

from ..errors import DllmPeftError
from . import app


@app.command("inspect")
def inspect_command() -> None:
    """Report an adapter's settings and per-noise-level norms (coming: issue 8)."""
    raise DllmPeftError("`dllm-peft inspect` is not available in this build yet")
