"""Adapter methods and everything that handles a trained adapter.

- one method a file (`lora.py`, `nara.py`, `dora.py`, `hira.py`, `multilora.py`, `trajectory.py`, `prompt.py`, ...),
  on the framework of `base.py` (wrap a linear as `base_layer`, inject, freeze, save by type);
- `registry.py`: every method by name — the CLI's choices, the adapter file's `"method"`, the conformance matrix;
- `options.py`: `--adapter-option KEY=VALUE` parsed into a method config's typed fields;
- `router.py`: LoRA-Diffusion's multi-task composition (the router composes adapters it is handed);
- `files.py`: the adapter file (`dllm_peft_adapter.safetensors` + `.json`): save, read, load;
- `peft_import.py`: a stock PEFT LoRA / DoRA / HiRA folder read as the equivalent dllm-peft adapter;
- `merge.py`, `export.py`: folding an adapter into the base; writing a stock PEFT LoRA / DoRA / HiRA with a model card;
- `summary.py`, `plots.py`: what `dllm-peft inspect` reports and draws.

May import: `diffusion` (the λ routing of `diffusion/conditioning.py`), `models` and the shared leaves; never `data`,
`training`, `evaluation` or `cli`.
"""

from .base import (
    AdapterConfig,
    AdapterLayer,
    MethodConfig,
    ModelAdapter,
    adapter_layers,
    adapter_state_dict,
    inject,
    unload,
)

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "MethodConfig",
    "ModelAdapter",
    "adapter_layers",
    "adapter_state_dict",
    "inject",
    "unload",
]
