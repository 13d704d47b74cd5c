"""`dllm-peft sample`: generate text with the masked-diffusion sampler."""

from __future__ import annotations

from ..errors import DllmPeftError
from . import app


@app.command("sample")
def sample_command() -> None:
    """Generate text with the masked-diffusion sampler (coming next: issue 3)."""
    raise DllmPeftError("`dllm-peft sample` is not available in this build yet")
