"""`Backbone`: a denoiser model together with what the rest of dllm-peft must know about it.

Everything that differs between dLLM families is settled here once: the mask and EOS ids come from the tokenizer
(never hard-coded), and `logits` undoes Dream-style shifted logits so that, for every backbone, position i of the
returned tensor scores the token at position i.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn


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

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Denoiser logits aligned with the input.

        Args:
            input_ids: (B, T) token ids, mask tokens where the canvas is still noisy.
            attention_mask: (B, T), 1 for real tokens and 0 for padding.
        Returns:
            (B, T, V) logits; row i scores the token at position i.
        """
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = output.logits if hasattr(output, "logits") else output[0]
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, T, V)
        return logits

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
