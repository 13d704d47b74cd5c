"""dllm-peft: parameter-efficient fine-tuning of diffusion LLMs, with NaRA as the headline method.

The public Python API, importable from the package root; each name is loaded on first use, so `import dllm_peft`
stays free (the lm-eval startup hook imports it in every interpreter) and a name costs only its own layer:

    from dllm_peft import load_backbone, load_adapter, sample, SamplerConfig
    backbone = load_backbone("dllm-tiny")
    load_adapter(backbone, "out")
    result = sample(backbone, [backbone.tokenizer.encode("Q: last digit of 4096?")], SamplerConfig(gen_length=8))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name → the module that defines it (the layers: models, diffusion, adapters, data, training, evaluation)
_PUBLIC = {
    "load_backbone": "models", "Backbone": "models",
    "sample": "diffusion.sampler", "log_likelihoods": "diffusion.likelihood",
    "noise_level": "diffusion.conditioning",
    "load_adapter": "adapters.files", "save_adapter": "adapters.files", "read_adapter": "adapters.files",
    "merge_adapter": "adapters.merge", "export_adapter": "adapters.export", "summarize": "adapters.summary",
    "METHODS": "adapters.registry", "get_method": "adapters.registry",
    "train": "training.train", "resolve_train_config": "training.recipes",
    "evaluate": "evaluation.evaluate",
    "TrainConfig": "config", "SamplerConfig": "config", "SampleConfig": "config", "EvalConfig": "config",
    "MergeConfig": "config", "ExportConfig": "config", "InspectConfig": "config",
    "DllmPeftError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dllm_peft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
