"""The denoiser call of one sampling step, without a cache or with Fast-dLLM's prefix / dual KV cache.

Fast-dLLM (Wu et al. 2025, arXiv 2505.22618) observes that in block-wise decoding the keys and values outside the
current block barely change while the block is decoded. At the start of each block one full forward computes the
logits *and* the K/V of the whole canvas; the following steps of the block recompute only
  * `prefix`: the current block and everything after it, against the cached K/V of the prompt and finished blocks;
  * `dual`:   the current block alone, against cached K/V of both the prefix and the (still masked) suffix.
Both are approximations in a bidirectional model: the cached K/V were computed from an older canvas.

With NaRA there is a second source of staleness: the adapter update depends on λ, so cached K/V were made at the λ of
the refresh, not the current one. `cache_refresh = N` recomputes the cache (one full forward) every N steps inside
a block; each refresh costs exactly one step of `--cache none`, so N = 1 is as exact and as slow as no cache.

A backbone qualifies when its model's forward takes `cache_positions` (the native LLaDA does: it computes only those
positions against a given cache, never modifying the cache in place) and its logits are not shifted.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import DllmPeftError
from ..models.backbone import Backbone
from ..models.llada import output_cache
from .conditioning import noise_level

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (B, n_kv_heads, S, head_dim)


def supports_kv_cache(backbone: Backbone) -> bool:
    """Whether the backbone can compute a slice of the canvas against cached K/V (see the module docstring)."""
    # Shifted logits (Dream) would need the position before the slice as well; not offered.
    return _accepts(backbone, "cache_positions") and not backbone.shift_logits


def _accepts(backbone: Backbone, argument: str) -> bool:
    return argument in inspect.signature(backbone.model.forward).parameters


class BlockDenoiser:
    """Logits of the current block for some rows of a fixed batch, reusing cached K/V when asked to.

    The batch is fixed at construction (its attention mask and RoPE positions); each call names the rows it runs.
    Call `start_block` before the first step of every block.
    """

    def __init__(
        self,
        backbone: Backbone,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: str = "none",
        cache_refresh: int = 0,
    ):
        """
        Args:
            attention_mask: (N, S) 1 for real tokens, 0 for left padding.
            position_ids: (N, S) RoPE positions; real tokens count from 0 whatever the padding.
            cache: none, prefix or dual.
            cache_refresh: recompute the cache every this many steps of a block (0: at block starts only).
        """
        if cache != "none" and not supports_kv_cache(backbone):
            raise DllmPeftError(
                f"--cache {cache} needs a model that can reuse cached keys and values, which "
                f"{type(backbone.model).__name__} cannot; use --cache none"
            )
        self.backbone = backbone
        self.batch_size = attention_mask.shape[0]
        padded = not bool(attention_mask.all())
        # Without padding the model's own mask and numbering are the same, and cost nothing. Models without a
        # `position_ids` argument (DistilBERT) number positions themselves, padding included.
        self.attention_mask = attention_mask if padded else None
        self.position_ids = position_ids if padded and _accepts(backbone, "position_ids") else None
        self.cache = cache
        self.cache_refresh = cache_refresh
        self.forward_passes = 0  # model calls so far (a CFG pair run as one batch counts once)
        self._stored: KVCache | None = None
        self._step_in_block = 0

    def start_block(self) -> None:
        self._step_in_block = 0

    def __call__(
        self, canvas: torch.Tensor, rows: torch.Tensor, start: int, end: int, level: torch.Tensor
    ) -> torch.Tensor:
        """Logits of canvas positions start..end-1.

        Args:
            canvas: (R, S) token ids of the rows that run.
            rows: (R,) their indices in the batch given at construction.
            level: (R,) noise level λ of each row.
        Returns:
            (R, end - start, V) logits.
        """
        step, self._step_in_block = self._step_in_block, self._step_in_block + 1
        self.forward_passes += 1
        refresh_due = step == 0 or (self.cache_refresh > 0 and step % self.cache_refresh == 0)
        mask = None if self.attention_mask is None else self.attention_mask[rows]  # (R, S)
        positions = {} if self.position_ids is None else {"position_ids": self.position_ids[rows]}  # (R, S)
        block = torch.arange(start, end, device=canvas.device)  # (L,) the only positions scored: the LM head runs there
        with noise_level(self.backbone.model, level):
            if self.cache == "none":
                return self.backbone.logits(canvas, mask, keep=block, noise_level=level, **positions)
            if refresh_due:
                logits, fresh = self._logits_and_cache(canvas, mask, positions, block, level)
                self._store(fresh, rows)
                return logits
            stop = canvas.shape[1] if self.cache == "prefix" else end
            return self.backbone.logits(
                canvas[:, start:stop],
                mask,  # the computed positions attend over the whole canvas
                keep=block - start,  # the block leads the computed slice
                noise_level=level,
                past_key_values=self._rows_of_cache(rows),
                cache_positions=slice(start, stop),
                **{name: value[:, start:stop] for name, value in positions.items()},
            )

    def _logits_and_cache(
        self,
        canvas: torch.Tensor,
        mask: torch.Tensor,
        positions: dict[str, torch.Tensor],
        keep: torch.Tensor,
        level: torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        """A full forward that also returns the K/V of every position (captured from the model's output)."""
        captured: list[KVCache] = []
        hook = self.backbone.model.register_forward_hook(
            lambda module, args, output: captured.append(list(output_cache(output)))
        )
        try:
            logits = self.backbone.logits(canvas, mask, keep=keep, use_cache=True, noise_level=level, **positions)
        finally:
            hook.remove()
        return logits, captured[0]

    def _store(self, fresh: KVCache, rows: torch.Tensor) -> None:
        """Write the fresh K/V of `rows` into the stored cache of the whole batch."""
        if self._stored is None:
            self._stored = [
                (k.new_zeros((self.batch_size, *k.shape[1:])), v.new_zeros((self.batch_size, *v.shape[1:])))
                for k, v in fresh
            ]
        for (stored_k, stored_v), (k, v) in zip(self._stored, fresh):
            stored_k.index_copy_(0, rows, k)
            stored_v.index_copy_(0, rows, v)

    def _rows_of_cache(self, rows: torch.Tensor) -> KVCache:
        assert self._stored is not None  # every block starts with a refresh
        if rows.numel() == self.batch_size:  # all rows, in order (rows are ascending): no copy needed
            return self._stored
        return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self._stored]
