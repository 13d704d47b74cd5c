"""`Backbone`: a denoiser model together with what the rest of dllm-peft must know about it.

Everything that differs between dLLM families is settled here once: the mask and EOS ids come from the tokenizer
(never hard-coded), and `logits` undoes Dream-style shifted logits so that, for every backbone, position i of the
returned tensor scores the token at position i.

The noise level reaches the model here too. Every caller (loss, validation, sampler, likelihood) passes λ, the masked
fraction of each row, as `noise_level`; a time-conditioned model (MDLM, SEDD: `model.takes_sigma`) receives
σ = −log(1 − λ) (`dit.sigma_from_noise_level`), every other model ignores it. (Noise-aware adapters get the same λ
through `diffusion.conditioning.noise_level`.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .dit import noise_level_of, sigma_from_noise_level


@dataclasses.dataclass
class Backbone:
    model: nn.Module
    tokenizer: Any
    mask_id: int
    eos_id: int
    name: str  # what `load_backbone` was given; stored in adapter files so merge can find the base again
    default_targets: tuple[str, ...]
    shift_logits: bool = False  # Dream: the prediction for position i is read at position i - 1
    max_length: int | None = None  # context length, when the config says

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        noise_level: torch.Tensor | float | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Denoiser logits aligned with the input.

        Args:
            input_ids: (B, T) token ids, mask tokens where the canvas is still noisy.
            attention_mask: (B, T), 1 for real tokens and 0 for padding.
            keep: (K,) positions to score, or None for all. Models that take transformers' `logits_to_keep` (our
                LLaDA and Dream classes) then run the LM head on those positions only (a (B, T, 126k) tensor is
                gigabytes at LLaDA-8B's vocabulary), unless something hooks the head's input (LoRA-Diffusion's
                adapter and router read every position there); otherwise the full logits are indexed.
            noise_level: (B,) or one λ, the masked fraction of each row; a time-conditioned model is given
                σ = −log(1 − λ). None: λ is read off the input (its share of mask tokens among the real ones).
        Returns:
            (B, T, V) logits, or (B, K, V) with `keep`; row i scores the token at position i (at keep[i]).
        """
        if getattr(self.model, "takes_sigma", False):
            if noise_level is None:
                noise_level = noise_level_of(input_ids, self.mask_id, attention_mask)
            level = torch.as_tensor(noise_level, dtype=torch.float32, device=input_ids.device).reshape(-1)
            kwargs["sigma"] = sigma_from_noise_level(level.expand(input_ids.shape[0]))  # (B,)
        head_only_there = False
        if keep is not None:
            source = (keep - 1).clamp(min=0) if self.shift_logits else keep  # (K,) the model's rows for them
            head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
            hooked = head is not None and bool(head._forward_pre_hooks or head._forward_hooks)  # LoRA-Diffusion
            head_only_there = getattr(self.model, "accepts_logits_to_keep", False) and not hooked
            if head_only_there:
                kwargs["logits_to_keep"] = source.to(input_ids.device)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = output.logits if hasattr(output, "logits") else output[0]
        if keep is not None:
            return logits if head_only_there else logits[:, source.to(logits.device)]  # (B, K, V)
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, T, V)
        return logits

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
