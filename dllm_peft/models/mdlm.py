"""Native MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models"), no remote code.

Read from kuleshov-group/mdlm (`models/dit.py`, `diffusion.py`) and the hub checkpoint `kuleshov-group/mdlm-owt`,
whose `modeling_mdlm.py` wraps the same DiT as `MDLM.backbone`. The hub layout, which `load_mdlm` reads as it is:

    config.json        model_type "mdlm", auto_map (never run), hidden_dim, cond_dim, n_blocks, n_heads, dropout,
                       model_length, vocab_size (50258 = GPT-2's 50257 + the mask), time_conditioning
    model.safetensors  keys under `backbone.` (`backbone.blocks.0.attn_qkv.weight`, `backbone.rotary_emb.inv_freq`, …)
    no tokenizer       the authors use GPT-2's (`bert-base-uncased` for their LM1B models)

The network takes token ids and σ (`dit.DiT`); `time_conditioning: false` (as in mdlm-owt) makes it ignore σ by
feeding σ = 0, exactly as the authors' `_process_sigma`. The mask token is the last row, id `vocab_size − 1` (GPT-2
has no mask token; the authors append it). `MDLMModel.forward` returns the denoiser logits of MDLM's SUBS
parameterisation: the mask column at −∞ (the clean token is never the mask), the rest as the network gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

from ..errors import DllmPeftError
from .dit import (
    DiT,
    DiTConfig,
    denoiser_logits,
    load_weights,
    read_state_dict,
    refuse_cache,
)

MDLM_MODEL_TYPE = "mdlm"
DIT_TARGETS = ("attn_qkv", "attn_out")  # the attention projections of every DiT block (MDLM and SEDD)
MDLM_CONFIG_KEYS = ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "vocab_size")


class MDLMModel(nn.Module):
    """MDLM: `backbone` is the authors' DiT; `forward` gives (B, T, V) denoiser logits at noise σ."""

    takes_sigma = True  # `Backbone.logits` passes σ = −log(1 − λ)

    def __init__(self, config: DiTConfig, time_conditioning: bool):
        super().__init__()
        self.config = config
        self.time_conditioning = time_conditioning
        self.mask_id = config.vocab_size - 1
        self.backbone = DiT(config)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Any = None,
    ) -> MaskedLMOutput:
        """Args: input_ids (B, T); sigma (B,) total noise (None: 0); the rest as `DiT.forward`."""
        refuse_cache(use_cache, past_key_values)
        reference = input_ids if input_ids is not None else inputs_embeds
        if sigma is None or not self.time_conditioning:
            sigma = torch.zeros(reference.shape[0], device=reference.device)  # the authors' σ = 0 without conditioning
        raw = self.backbone(input_ids, sigma, attention_mask, position_ids, inputs_embeds)  # (B, T, V)
        return MaskedLMOutput(logits=denoiser_logits(raw, self.mask_id))

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.backbone.get_output_embeddings()


def is_mdlm_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") == MDLM_MODEL_TYPE


def mdlm_config(raw: dict[str, Any], directory: Path) -> tuple[DiTConfig, bool]:
    """(network config, time_conditioning) from the hub's config.json."""
    missing = [key for key in MDLM_CONFIG_KEYS if key not in raw]
    if missing:
        raise DllmPeftError(f"{directory / 'config.json'} is an MDLM config without {', '.join(missing)}; use the "
                            "config.json of the checkpoint (as kuleshov-group/mdlm-owt ships it)")
    config = DiTConfig(
        model_type=MDLM_MODEL_TYPE, vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_dim"]),
        cond_dim=int(raw["cond_dim"]), n_heads=int(raw["n_heads"]), n_blocks=int(raw["n_blocks"]),
        dropout=float(raw.get("dropout", 0.1)), model_length=raw.get("model_length"),
    )
    return config, bool(raw.get("time_conditioning", False))


def load_mdlm(directory: Path, raw: dict[str, Any], dtype: torch.dtype, device: torch.device) -> MDLMModel:
    """The MDLM checkpoint in `directory` (config already read as `raw`), in `dtype` on `device`, in eval mode."""
    config, time_conditioning = mdlm_config(raw, directory)
    with torch.device("meta"):
        model = MDLMModel(config, time_conditioning)
    return load_weights(model, read_state_dict(directory), directory, dtype, device).eval()
