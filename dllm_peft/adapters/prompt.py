"""Prompt tuning (Lester et al., 2021) and P-tuning (Liu et al., 2021): n learned virtual tokens before every input.

Virtual tokens are embeddings, not token ids, so the masked-diffusion loss never masks them and the sampler never
generates them. The sequence the model sees is n positions longer than the caller's; `VirtualTokens` hides that in
two hooks on the model root, shared with prefix tuning (`prefix.py`):

  * before the forward, the input grows by n positions at the front: prompt tuning prepends n embeddings (input ids
    become `inputs_embeds`); the attention mask gains n ones; explicit RoPE positions move up by n (the virtual
    tokens take positions 0..n−1);
  * after the forward, the n virtual positions are cut from the logits (and from the hidden states of a dict
    output), so `backbone.logits` still returns (B, T, V) aligned with the caller's input. A `logits_to_keep` of
    positions (`Backbone.logits(keep=…)`) is moved up by n instead, and the (B, K, V) logits are left whole.

KV-cache calls (the sampler's prefix/dual cache, LLaDA's `cache_positions` protocol): a full forward with
`use_cache=True` returns K/V over n + T positions, the virtual ones first. A later call that passes those
`past_key_values` is a continuation: nothing is prepended, and its `cache_positions`, attention mask and positions are
moved by n to address the same canvas positions.

Prompt tuning's tokens start as the input embeddings of n random vocabulary tokens (Lester et al. found vocabulary
initialisation better than random vectors). P-tuning produces them with an encoder, here a residual MLP
e + MLP(e) (PEFT's three-layer MLP, last layer zero-initialised), so it starts exactly where prompt tuning starts
and differs only in the reparametrisation. Neither is a no-op at start: attention sees the extra tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..errors import DllmPeftError
from .base import MethodConfig, ModelAdapter


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
    method = "prompt"

    num_virtual_tokens: int = dataclasses.field(default=32, metadata={"help": "Virtual tokens n before every input."})

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise DllmPeftError(f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens}")


@dataclasses.dataclass(frozen=True)
class PTuningConfig(PromptTuningConfig):
    method = "p-tuning"

    encoder_hidden_size: int | None = dataclasses.field(
        default=None, metadata={"help": "Hidden width of P-tuning's prompt encoder; default: the model width."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise DllmPeftError(f"encoder_hidden_size must be a positive integer, got {self.encoder_hidden_size}")


class VirtualTokens(ModelAdapter):
    """n positions in front of every sequence, invisible to callers. Subclasses fill them in `grow_input`."""

    shifts_positions = True  # the virtual tokens hold RoPE positions 0..n−1 (prefix tuning's carry no position)

    def __init__(self, model: nn.Module, config: PromptTuningConfig, router=None):
        super().__init__(model, config, router)
        self.count = config.num_virtual_tokens
        self._added = 0  # virtual positions prepended by the running forward, cut from its output afterwards
        self._logits_cut = 0  # how many of them to cut from its logits (0 when it kept chosen positions only)

    def attach(self, model: nn.Module) -> list[str]:
        self._hooks.append(model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        self._hooks.append(model.register_forward_hook(self._after_forward))
        return self.acted_on(model)

    def acted_on(self, model: nn.Module) -> list[str]:
        raise NotImplementedError

    def grow_input(self, model: nn.Module, kwargs: dict[str, Any]) -> int:
        """Make the model see the virtual tokens first. Returns how many output positions to cut afterwards."""
        raise NotImplementedError

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]):
        kwargs = dict(kwargs)
        if args:  # model(input_ids, ...) called positionally
            kwargs["input_ids"], args = args[0], args[1:]
        self._added = 0
        continuation = kwargs.get("past_key_values") is not None
        if continuation:
            positions = kwargs.get("cache_positions")
            if isinstance(positions, slice):
                start, stop = _moved(positions.start, self.count, 0), _moved(positions.stop, self.count, None)
                kwargs["cache_positions"] = slice(start, stop, positions.step)
            elif positions is not None:
                kwargs["cache_positions"] = torch.as_tensor(positions) + self.count
        else:
            self._added = self.grow_input(model, kwargs)
        self._logits_cut = self._added
        keep = kwargs.get("logits_to_keep")
        if self._added and isinstance(keep, torch.Tensor):  # chosen positions: the same ones, n places further on
            kwargs["logits_to_keep"], self._logits_cut = keep + self._added, 0
        elif self._added and keep:  # the last `keep` positions are the caller's already
            self._logits_cut = 0
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            ones = mask.new_ones(mask.shape[0], self.count)
            kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)  # (B, n + T or n + S)
        position_ids = kwargs.get("position_ids")
        if self.shifts_positions and position_ids is not None:
            shifted = position_ids + self.count
            if self._added:  # the virtual tokens themselves take positions 0..n−1
                front = torch.arange(self.count, device=shifted.device).expand(*shifted.shape[:-1], self.count)
                shifted = torch.cat([front, shifted], dim=-1)
            kwargs["position_ids"] = shifted
        return args, kwargs

    def _after_forward(self, model: nn.Module, args: tuple, output):
        added, self._added = self._added, 0
        cut, self._logits_cut = self._logits_cut, 0
        if not added:
            return output
        if isinstance(output, tuple):
            return (output[0][:, cut:], *output[1:])
        output.logits = output.logits[:, cut:]  # (B, T, V), or (B, K, V) as kept
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(state[:, added:] for state in output.hidden_states)
        return output


def _moved(index: int | None, offset: int, default: int | None) -> int | None:
    """A slice bound moved past the virtual positions; negative bounds count from the end and stay."""
    if index is None:
        return None if default is None else default + offset
    return index + offset if index >= 0 else index


def vocabulary_rows(model: nn.Module, count: int) -> torch.Tensor:
    """Input embeddings of `count` random vocabulary tokens, float32: (count, d)."""
    embedding = model.get_input_embeddings().weight
    vocabulary = getattr(model.config, "vocab_size", None) or embedding.shape[0]
    rows = torch.randint(0, min(vocabulary, embedding.shape[0]), (count,))
    return embedding.detach()[rows.to(embedding.device)].float()


class PromptTuning(VirtualTokens):
    """n trainable input embeddings before every sequence."""

    def __init__(self, model: nn.Module, config: PromptTuningConfig, router=None):
        super().__init__(model, config, router)
        self.embeddings = nn.Parameter(vocabulary_rows(model, self.count))  # (n, d)

    def virtual_embeddings(self) -> torch.Tensor:
        return self.embeddings  # (n, d)

    def acted_on(self, model: nn.Module) -> list[str]:
        embedding = model.get_input_embeddings()
        return [name for name, module in model.named_modules() if module is embedding]

    def grow_input(self, model: nn.Module, kwargs: dict[str, Any]) -> int:
        embeds = kwargs.pop("inputs_embeds", None)
        input_ids = kwargs.pop("input_ids", None)
        if embeds is None:
            embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
        virtual = self.virtual_embeddings().to(embeds.dtype)  # (n, d)
        kwargs["inputs_embeds"] = torch.cat([virtual.expand(embeds.shape[0], -1, -1), embeds], dim=1)  # (B, n + T, d)
        return self.count


class PTuning(PromptTuning):
    """Prompt tuning whose virtual embeddings come from a residual MLP encoder: e + MLP(e)."""

    def __init__(self, model: nn.Module, config: PTuningConfig, router=None):
        super().__init__(model, config, router)
        width = self.embeddings.shape[1]
        hidden = config.encoder_hidden_size or width
        last = nn.Linear(hidden, width)
        nn.init.zeros_(last.weight)  # starts exactly as prompt tuning
        nn.init.zeros_(last.bias)
        self.encoder = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)

    def virtual_embeddings(self) -> torch.Tensor:
        return self.embeddings + self.encoder(self.embeddings)  # (n, d)
