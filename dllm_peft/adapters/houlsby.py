"""Houlsby adapters (Houlsby et al., ICML 2019): a bottleneck MLP after each attention and feed-forward output.

Houlsby inserts `h ← h + up(act(down(h)))` right after the attention output projection and after the feed-forward
down-projection, before each residual addition. Wrapping exactly those two linears does that on any backbone:

    y = W0 x + s · up(GELU(down(dropout(W0 x))))

with a bottleneck of width m = `rank`. `up` starts at zero (weight and bias), so a fresh adapter is a no-op (Houlsby
starts near identity with small weights; an exact zero keeps our conformance check exact). The default targets are
the output projections of LLaDA (`attn_out`, per-block `ff_out`) and of Qwen2/Dream (`o_proj`, `down_proj`); the LM
head is never matched by them. The update depends on the layer's output non-linearly, so it does not merge.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DllmPeftError
from .base import AdapterConfig, AdapterLayer

OUTPUT_PROJECTIONS = (r".*\.(attn_out|ff_out|o_proj|down_proj)",)


@dataclasses.dataclass(frozen=True)
class HoulsbyConfig(AdapterConfig):
    method = "houlsby"
    default_targets = OUTPUT_PROJECTIONS

    rank: int = dataclasses.field(default=32, metadata={"help": "Bottleneck width m of each adapter."})


class HoulsbyLayer(AdapterLayer):
    """A linear layer followed by a residual bottleneck adapter on its output."""

    def __init__(self, base_layer: nn.Linear, config: HoulsbyConfig, name: str, router=None):
        super().__init__(base_layer, config, name, router)
        self.down = nn.Linear(self.out_features, config.rank)
        self.up = nn.Linear(config.rank, self.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.base_layer(x)  # (..., out)
        bottleneck = F.gelu(self.down(self.adapter_dropout(hidden).to(self.down.weight.dtype)))  # (..., m)
        return hidden + (self.config.scale * self.up(bottleneck)).to(hidden.dtype)

    def delta_weight(self, noise_level: float | None = None) -> torch.Tensor:
        raise DllmPeftError("a Houlsby adapter is a non-linear function of the layer output; it has no weight update")
