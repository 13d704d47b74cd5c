"""The one exception type for expected user mistakes.

Core code raises `DllmPeftError` with a single sentence that names the bad value and says what to change; the CLI
prints that sentence and exits with status 2, so a user never sees a traceback for a mistake we anticipated.
"""


class DllmPeftError(Exception):
    """An expected mistake in the user's input (a flag, a file, a model): one sentence, no traceback."""


def require_extra(module: str, extra: str, purpose: str) -> None:
    """Raise one sentence naming the pip command when `module`, installed by the `[extra]` extra, is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DllmPeftError(
            f"{purpose} needs {module}, which the base install leaves out; run: pip install 'dllm-peft[{extra}]'"
        )
