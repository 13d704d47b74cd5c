"""`python -m dllm_peft` runs the CLI."""

from .cli import main

main()
