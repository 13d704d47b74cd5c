"""Prefix tuning (Li & Liang, 2021): n learned key/value pairs in front of every attention layer.

Every layer attends to n extra positions whose keys and values are parameters (one (n, n_kv_heads, head_dim) pair per
layer). They reach the model through its KV-cache input: a fresh forward is given `past_key_values` = the prefix, so
LLaDA appends the real tokens after it and every real token attends to it (bidirectional attention: the prefix is
seen by all positions, and the logits come out for the real tokens only). The attention mask gains n leading ones.
The keys are learned after RoPE (a rotation of a free vector is another free vector), so the prefix holds no
position and the real tokens keep theirs. Cached continuations (the sampler's prefix/dual cache) are handled as for
prompt tuning (`prompt.VirtualTokens`): the cache returned by a full forward holds the prefix in its first n places.

The prefix starts as the keys and values the frozen model computes for n random vocabulary tokens (Li & Liang's
initialisation from real-word activations; random vectors train worse). It is not a no-op at start.

Scope: the KV-cache layout this relies on is the native LLaDA's (a list of per-layer (k, v) tensors, keys after
RoPE); other architectures get a clear error and can use prompt tuning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..errors import DllmPeftError
from ..models.llada import output_cache
from .prompt import PromptTuningConfig, VirtualTokens


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(PromptTuningConfig):
    method = "prefix"


class PrefixTuning(VirtualTokens):
    """Learned per-layer keys and values, given to the model as the KV cache of n virtual positions."""

    shifts_positions = False  # the prefix has no RoPE position; the real tokens keep theirs

    def __init__(self, model: nn.Module, config: PrefixTuningConfig, router=None):
        super().__init__(model, config, router)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type != "llada":
            raise DllmPeftError(
                f"prefix tuning needs LLaDA's KV-cache layout, but this model is {model_type or type(model).__name__}; "
                "use --method prompt or p-tuning"
            )
        vocabulary = model.config.vocab_size
        tokens = torch.randint(0, vocabulary, (1, self.count)).to(next(model.parameters()).device)
        with torch.no_grad():
            cache = output_cache(model(input_ids=tokens, use_cache=True))
        # (layers, n_kv_heads, n, head_dim), the layout of one sequence's cache
        self.keys = nn.Parameter(torch.stack([key[0] for key, _ in cache]).float())
        self.values = nn.Parameter(torch.stack([value[0] for _, value in cache]).float())

    def acted_on(self, model: nn.Module) -> list[str]:
        blocks = model.model.transformer.blocks
        return [name for name, module in model.named_modules() if any(module is block for block in blocks)]

    def grow_input(self, model: nn.Module, kwargs: dict[str, Any]) -> int:
        tokens = kwargs.get("input_ids")
        reference = tokens if tokens is not None else kwargs["inputs_embeds"]
        batch = reference.shape[0]
        dtype = next(model.parameters()).dtype
        kwargs["past_key_values"] = [
            (key.to(dtype).expand(batch, -1, -1, -1), value.to(dtype).expand(batch, -1, -1, -1))  # (B, Hkv, n, hd)
            for key, value in zip(self.keys, self.values)
        ]
        return 0  # the real tokens are appended after the prefix: their logits are the whole output
