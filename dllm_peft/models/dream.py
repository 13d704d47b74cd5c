"""Native Dream (Dream-org/Dream-v0-*-7B): transformers' Qwen2 made bidirectional — no remote code.

Dream is a masked diffusion LM initialised from Qwen2.5 and trained without the causal mask. Its checkpoints keep the
Qwen2 layout and key names (`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj` with biases on q/k/v,
`model.layers.{i}.mlp.{gate,up,down}_proj`, `model.norm`, `lm_head`), and its `config.json` carries Qwen2's field
names plus `model_type: "Dream"`, `mask_token_id` and an `auto_map` pointing at the authors' `modeling_dream.py`.

So the whole architecture is Qwen2 with two switches, both documented by transformers 5:
  * `config.is_causal = False` makes `create_causal_mask` build a *bidirectional* mask, which still hides padded
    keys given a 2-D `attention_mask`;
  * `attention.is_causal = False` on every layer stops SDPA from falling back to `is_causal=True` when no mask is
    needed (no padding in the batch).
Dream keeps the autoregressive habit of its Qwen2 start: the logits at position i predict the token at i + 1
(`Backbone.shift_logits` undoes that in one place).

Dream's tokenizer config names a custom `DreamTokenizer` (remote code); it is a copy of Qwen2's byte-level BPE, so
`Qwen2Tokenizer` reads the same `vocab.json` / `merges.txt` / `tokenizer.json` (`DREAM_TOKENIZER_CLASS`).
"""

from __future__ import annotations

from functools import partial

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)

__all__ = ["DREAM_TARGETS", "DREAM_TOKENIZER_CLASS", "DreamConfig", "DreamModel", "is_dream_model_type"]

DREAM_MODEL_TYPE = "Dream"  # as written in the released config.json (capital D)
DREAM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
DREAM_TOKENIZER_CLASS = Qwen2Tokenizer


def is_dream_model_type(model_type: str | None) -> bool:
    """Dream and its derivatives (DiffuCoder, Dream-Coder) write `Dream`; accept any capitalisation."""
    return (model_type or "").lower() == DREAM_MODEL_TYPE.lower()


class DreamConfig(Qwen2Config):
    """Qwen2's configuration under Dream's `model_type`; Dream's extra fields (`mask_token_id`) are kept as-is."""

    model_type = DREAM_MODEL_TYPE
    is_causal = False  # read by transformers' mask builder: bidirectional attention with padding masks


class DreamModel(Qwen2ForCausalLM):
    """Dream: Qwen2 weights and names, non-causal attention, shifted logits. `forward` returns (B, T, V) logits."""

    config_class = DreamConfig
    accepts_logits_to_keep = True  # `Backbone.logits(keep=…)` runs the LM head on those positions only

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn.is_causal = False  # SDPA would otherwise apply a causal mask when none is passed


def _register() -> None:
    """Make the Auto classes resolve `model_type="Dream"` natively, even though the config has an `auto_map`."""
    steps = [partial(AutoConfig.register, DREAM_MODEL_TYPE, DreamConfig)]
    steps += [partial(auto.register, DreamConfig, DreamModel) for auto in (AutoModel, AutoModelForMaskedLM)]
    for step in steps:
        step(exist_ok=True)


_register()
