"""The masked-diffusion sampler (LLaDA `generate.py` semantics) — interface pinned; the algorithm lands with issue 3.

    sample(backbone, prompts, config, generator=None, on_step=None) -> SampleResult
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..config import SamplerConfig
from ..models.backbone import Backbone


@dataclasses.dataclass(frozen=True)
class SampleResult:
    tokens: list[list[int]]  # per prompt: the generated response ids, cut before the first EOS
    canvas: torch.Tensor  # (B, T) the final canvas (prompts left-padded), for inspection and tests
    steps: list[int]  # per prompt: denoising steps actually run


def sample(
    backbone: Backbone,
    prompts: list[list[int]],
    config: SamplerConfig,
    generator: torch.Generator | None = None,
    on_step: Callable[[torch.Tensor, int], None] | None = None,
) -> SampleResult:
    """Generate a response for each tokenised prompt. Not implemented yet (issue 3)."""
    raise NotImplementedError("the sampler lands with issue 3")
