"""The one exception type for expected user mistakes.

Core code raises `DllmPeftError` with a single sentence that names the bad value and says what to change; the CLI
prints that sentence and exits with status 2, so a user never sees a traceback for a mistake we anticipated.
"""


class DllmPeftError(Exception):
    """An expected mistake in the user's input (a flag, a file, a model): one sentence, no traceback."""
