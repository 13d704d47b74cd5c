"""`dllm-peft merge`: fold an adapter into the base weights."""

from __future__ import annotations

from ..errors import DllmPeftError
from . import app


@app.command("merge")
def merge_command() -> None:
    """Merge an adapter into its base model (coming: issue 8)."""
    raise DllmPeftError("`dllm-peft merge` is not available in this build yet")
