"""Masked language models (BERT, RoBERTa, ModernBERT, DistilBERT, …) as one-step denoisers of masked diffusion.

A masked LM already is what a masked diffusion LM needs: bidirectional attention and, at every position, logits for
the token that belongs there (no shift), so `AutoModelForMaskedLM` is loaded as it is (as in "Diffusion-BERT"-style
and MDLM fine-tuning of encoder models).

One thing must be added. BERT-style models add *absolute* position embeddings and count positions from the left
edge of the tensor (RoBERTa: from `padding_idx + 1`), so a left-padded sequence — as the sampler builds them — would
be seen at other positions than the same sequence alone. `load_masked_lm` therefore installs a forward pre-hook that
owns the positions: without `position_ids` it derives them from the 2-D `attention_mask` (position = number of real
tokens before it), which leaves unpadded inputs exactly as before; given `position_ids`, they follow the convention of
the whole project (the first real token is 0, as for the RoPE models) and are moved onto RoBERTa's offset table.
Rotary models (ModernBERT) need nothing: only relative positions matter there.

Default adapter targets follow the attention layers of each naming scheme (the reference adapts q, k, v and the
attention output): BERT/RoBERTa `attention.self.{query,key,value}` and `attention.output.dense` (not the MLP's
`output.dense`), ModernBERT `attn.Wqkv` and `attn.Wo` (not `mlp.Wo`), DistilBERT `attention.{q,k,v,out}_lin`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedModel

__all__ = ["MASKED_LM_TARGET_SETS", "load_masked_lm", "masked_lm_max_length", "padding_aware_position_offset"]

BERT_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
MODERNBERT_TARGETS = ("attn.Wqkv", "attn.Wo")
DISTILBERT_TARGETS = ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin")
MASKED_LM_TARGET_SETS = (BERT_TARGETS, MODERNBERT_TARGETS, DISTILBERT_TARGETS)


def load_masked_lm(directory: Path, **load_kwargs: Any) -> tuple[PreTrainedModel, dict[str, Any]]:
    """`AutoModelForMaskedLM.from_pretrained` with padding-aware absolute positions; returns (model, loading info)."""
    model, loading_info = AutoModelForMaskedLM.from_pretrained(directory, output_loading_info=True, **load_kwargs)
    offset = padding_aware_position_offset(model)
    if offset is not None:
        model.register_forward_pre_hook(_positions_from_attention_mask(offset), with_kwargs=True)
    return model, loading_info


def padding_aware_position_offset(model: nn.Module) -> int | None:
    """The id of the first position if `model` has an absolute position table it lets callers index, else None."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding) or "position_ids" not in inspect.signature(model.forward).parameters:
        return None
    # RoBERTa-style tables reserve rows 0..padding_idx and number real tokens from padding_idx + 1.
    padding_idx = getattr(embeddings, "padding_idx", None)
    return 0 if padding_idx is None or table.padding_idx is None else padding_idx + 1


def _positions_from_attention_mask(offset: int):
    def set_position_ids(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        positions, attention_mask = kwargs.get("position_ids"), kwargs.get("attention_mask")
        if positions is None:
            if attention_mask is None or attention_mask.dim() != 2:
                return None  # the model's own numbering is right for unpadded input
            positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T) real tokens before each
        return args, {**kwargs, "position_ids": positions + offset}

    return set_position_ids


def masked_lm_max_length(model: PreTrainedModel) -> int | None:
    """Longest input the position table allows (RoBERTa loses its reserved rows), None when unbounded."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return None
    return int(limit) - (padding_aware_position_offset(model) or 0)
