"""`python -m dllm_peft.evaluation [lm-eval arguments]`: lm-eval's own command line, with `dllm-peft` registered.

The plain `lm_eval` command finds `dllm-peft` too (through the startup hook of `registration.py`); this wrapper
also adds our task folder as `--include_path` and works where the hook is not installed (running from a source tree).
It imports `DllmPeftLM` (which registers it), then hands over to lm-eval's `cli_evaluate`, so every lm-eval flag works
unchanged. Given only `adapter=` (no `pretrained=`), it adds the adapter's base model to `--model_args`, so that
lm-eval files the results under a folder named after the model:

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
    if "--model_args" in arguments[:-1]:
        position = arguments.index("--model_args") + 1
        arguments[position] = with_base_model(arguments[position])
    if "--tasks" in arguments and "--include_path" not in arguments:
        arguments += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *arguments]
    cli_evaluate()


def with_base_model(model_args: str) -> str:
    """`adapter=PATH,...` → `pretrained=<its base model>,adapter=PATH,...`; other argument strings unchanged."""
    keys = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
    adapter = keys.get("adapter") or keys.get("peft")
    if not adapter or "pretrained" in keys:
        return model_args
    from .lm import base_model_of

    return f"pretrained={base_model_of(adapter)},{model_args}"


if __name__ == "__main__":
    main()
