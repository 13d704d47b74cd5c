"""The lm-eval harness adapter: a model class for dLLMs, the task catalogue, task YAMLs and their data and scoring.

- `lm.py`: `DllmPeftLM`, registered with lm-eval as `dllm-peft` (imports lm-eval, so it is not imported here);
- `catalogue.py`: tasks, suites (`commonsense`, `math`, `code`, `arc`) and protocols → lm-eval task names;
- `documents.py`: `--data-dir` resolution and the loaders of every task's files;
- `answers.py`: answer extraction and the programs that test generated code;
- `registration.py`: the startup hook that lets the plain `lm_eval --model dllm-peft` import `lm.py` on demand;
- `tasks/`: the YAML tasks (`dllm_peft_<task>`) and `utils.py`, usable from lm-eval with `--include_path`;
- `__main__.py`: `python -m dllm_peft.harness ...` is lm-eval's command line with the model and tasks registered.
"""
