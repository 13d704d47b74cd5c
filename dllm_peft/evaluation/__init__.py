"""Evaluation: `dllm-peft eval`, the lm-eval model class for dLLMs, the task catalogue, task data and scoring.

- `evaluate.py`: `evaluate(config)` — load, adapt, run the lm-eval tasks, return the results;
- `lm.py`: `DllmPeftLM`, registered with lm-eval as `dllm-peft` (imports lm-eval, so it is not imported here);
- `catalogue.py`: tasks, suites (`commonsense`, `math`, `code`, `arc`) and protocols → lm-eval task names;
- `documents.py`: `--data-dir` resolution and the loaders of every task's files;
- `answers.py`: answer extraction and the programs that test generated code;
- `registration.py`: the startup hook that lets the plain `lm_eval --model dllm-peft` import `lm.py` on demand;
- `tasks/`: the YAML tasks (`dllm_peft_<task>`) and `utils.py`, usable from lm-eval with `--include_path`;
- `sandbox.py`: the confined runner of generated code (code tasks, only with `--allow-code-execution`);
- `__main__.py`: `python -m dllm_peft.evaluation ...` is lm-eval's command line with the model and tasks registered.

May import: `adapters`, `diffusion`, `data`, `models` and the shared leaves; never `training` or `cli`. Importing
this package is free (no torch, no lm-eval): the `.pth` startup hook imports `registration.py` in every interpreter.
"""
