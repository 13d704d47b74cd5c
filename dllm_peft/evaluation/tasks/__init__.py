"""lm-eval task files of dllm-peft: the YAMLs of this folder and `utils.py`, which they name with `!function`."""
