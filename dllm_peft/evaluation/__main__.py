"""`python -m dllm_peft.evaluation [lm-eval arguments]`: lm-eval's own command line, with `dllm-peft` registered.

The plain `lm_eval` command finds `dllm-peft` too (through the startup hook of `registration.py`); this wrapper
also adds our task folder as `--include_path` and works where the hook is not installed (running from a source tree).
It imports `DllmPeftLM` (which registers it), then hands over to lm-eval's `cli_evaluate`, so every lm-eval flag works
unchanged:

    python -m dllm_peft.evaluation --model dllm-peft --model_args pretrained=tiny-llada,mc_num=8 \\
        --tasks dllm_peft_uppercase --device cpu --limit 10
"""

from __future__ import annotations

import sys

from .catalogue import TASKS_DIR


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from . import lm  # noqa: F401  (registers the model)

    arguments = list(sys.argv[1:] if argv is None else argv)
    if "--tasks" in arguments and "--include_path" not in arguments:
        arguments += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *arguments]
    cli_evaluate()


if __name__ == "__main__":
    main()
