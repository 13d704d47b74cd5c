"""Backbones: `load_backbone(name_or_path)` → `Backbone` (model, tokenizer, mask/EOS ids, shifted logits, targets).

Built-in names are models constructed in code (no download): `tiny-llada` is a randomly initialised two-layer LLaDA
with a byte tokenizer, for tests and quick trials.
"""

from __future__ import annotations

import torch

from ..errors import DllmPeftError
from .backbone import Backbone
from .byte_tokenizer import ByteTokenizer

LLADA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out")


def tiny_llada(seed: int = 0, **overrides) -> Backbone:
    """A randomly initialised tiny LLaDA (two blocks, d_model 64) with the byte tokenizer."""
    from .llada import LLaDAModelLM, tiny_llada_config

    tokenizer = ByteTokenizer()
    config = tiny_llada_config(
        mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id, **overrides
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LLaDAModelLM(config).eval()
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        mask_id=tokenizer.mask_token_id,
        eos_id=tokenizer.eos_token_id,
        name="tiny-llada",
        default_targets=LLADA_TARGETS,
        max_length=config.max_sequence_length,
    )


BUILTIN_MODELS = {"tiny-llada": tiny_llada}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DllmPeftError(f"--device {device} was asked for but no CUDA device is available; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it, float32 elsewhere (CPU kernels for half types are slow)."""
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise DllmPeftError(f"unknown --dtype {dtype!r}; choose auto or one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_backbone(
    name_or_path: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> Backbone:
    """The backbone called `name_or_path`, on `device` in `dtype` (checkpoints on disk come with issue 4)."""
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    if name_or_path in BUILTIN_MODELS:
        backbone = BUILTIN_MODELS[name_or_path]()
        backbone.model.to(device=target_device, dtype=target_dtype)
        return backbone
    raise DllmPeftError(f"unknown model {name_or_path!r}; built-in models: {', '.join(BUILTIN_MODELS)}")


__all__ = ["Backbone", "BUILTIN_MODELS", "LLADA_TARGETS", "load_backbone", "tiny_llada"]
