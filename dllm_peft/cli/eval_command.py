"""`dllm-peft eval`: evaluate a model or adapter on benchmark tasks."""

from __future__ import annotations

from ..errors import DllmPeftError
from . import app


@app.command("eval")
def eval_command() -> None:
    """Evaluate a model or adapter on benchmark tasks (coming: issue 6)."""
    raise DllmPeftError("`dllm-peft eval` is not available in this build yet")
