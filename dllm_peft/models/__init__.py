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


def load_backbone(name_or_path: str) -> Backbone:
    """The backbone called `name_or_path` (a built-in name for now; checkpoints on disk come with issue 4)."""
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]()
    raise DllmPeftError(f"unknown model {name_or_path!r}; built-in models: {', '.join(BUILTIN_MODELS)}")


__all__ = ["Backbone", "BUILTIN_MODELS", "LLADA_TARGETS", "load_backbone", "tiny_llada"]
