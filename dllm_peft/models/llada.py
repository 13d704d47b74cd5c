"""Native, weight-compatible LLaDA (masked diffusion LM) for ``transformers`` -- no remote code.

What lives here:
  * ``LLaDAConfig``   -- ``model_type="llada"``; field names exactly as in LLaDA's ``config.json``. The many
    OLMo leftovers of a real config (``alibi``, ``init_fn``, ``flash_attention``, dropouts, ...) are accepted
    and kept as plain attributes; dropouts are ignored (all 0.0 in released checkpoints).
  * ``LLaDAModelLM``  -- ``PreTrainedModel`` whose state-dict keys match the released checkpoints
    (``model.transformer.{wte,blocks.N.*,ln_f,ff_out}.weight``), so ``from_pretrained`` loads them as-is.
  * ``tiny_llada_config`` -- a small config for tests.

It follows the reference ``modeling_llada.py`` shipped with GSAI-ML/LLaDA-8B-{Base,Instruct} (OLMo-derived),
``LLaDALlamaBlock`` path:
  * pre-norm RMSNorm, statistics in float32, cast back, then ``weight * x``;
  * MLP ``ff_out(silu(ff_proj(x)) * up_proj(x))``: the activation is on ``ff_proj`` (the gate), ``up_proj`` is
    the linear branch. Both are ``mlp_hidden_size`` wide (``mlp_ratio * d_model`` if unset) and ``ff_out`` takes
    the full width back: LLaDA-8B ships ``activation_type="silu"`` (output multiplier 1.0), so nothing is halved
    (ff_proj/up_proj ``[12288, 4096]``, ff_out ``[4096, 12288]``). ``"swiglu"`` is accepted as an alias for the
    same gated MLP (the reference llama block cannot run with its halving SwiGLU);
  * RoPE on every head dim with the rotate-half convention (``cat(-x2, x1)`` on the two halves), inverse
    frequencies ``theta ** -(arange(0, hd, 2) / hd)``, angles/sin/cos and the rotation in float32;
  * bidirectional (non-causal) SDPA; GQA repeats each k/v head ``n_heads // n_kv_heads`` times
    (``repeat_interleave``); logits from ``ff_out`` (or ``wte`` when ``weight_tying``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

LLADA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out")  # the NaRA recipes' adapter targets (attention only)

try:  # transformers >= 4.52: the standard per-layer checkpointing base class
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - same contract for older transformers

    class GradientCheckpointingLayer(nn.Module):
        gradient_checkpointing = False

        def __call__(self, *args, **kwargs):
            if self.gradient_checkpointing and self.training:
                return self._gradient_checkpointing_func(partial(super().__call__, **kwargs), *args)
            return super().__call__(*args, **kwargs)


try:  # transformers >= 5: init helpers that skip already-loaded tensors
    from transformers import initialization as _init
except ImportError:  # pragma: no cover
    _init = nn.init

__all__ = ["LLaDAConfig", "LLaDAModelLM", "LLaDAModel", "LLaDALlamaBlock", "LLaDARMSNorm", "tiny_llada_config"]

# One (key, value) per layer, each [batch, n_kv_heads, canvas_len, head_dim], keys after RoPE.
KVCache = Sequence[tuple[torch.Tensor, torch.Tensor]]
# transformers 5 renamed the output field `past_key_values` to `cache` and warns on the old name: use whichever exists
OUTPUT_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
CachePositions = Union[slice, torch.Tensor]


class LLaDAConfig(PretrainedConfig):
    """LLaDA configuration; defaults are LLaDA-8B's. Unknown keyword arguments are kept as attributes."""

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, d_model: int = 4096, n_heads: int = 32, n_kv_heads: Optional[int] = None, n_layers: int = 32,
                 mlp_hidden_size: Optional[int] = 12288, mlp_ratio: int = 4, activation_type: str = "silu",
                 block_type: str = "llama", rope: bool = True, rope_theta: float = 500000.0,
                 layer_norm_type: str = "rms", rms_norm_eps: float = 1e-5, include_bias: bool = False,
                 include_qkv_bias: bool = False, weight_tying: bool = False, vocab_size: int = 126464,
                 embedding_size: Optional[int] = 126464, mask_token_id: Optional[int] = 126336,
                 eos_token_id: Optional[int] = 126081, pad_token_id: Optional[int] = 126081,
                 max_sequence_length: int = 4096, init_std: float = 0.02, use_cache: bool = False, **kwargs: Any):
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.n_kv_heads = n_kv_heads
        self.mlp_hidden_size, self.mlp_ratio, self.activation_type = mlp_hidden_size, mlp_ratio, activation_type
        self.block_type, self.rope, self.rope_theta = block_type, rope, rope_theta
        self.layer_norm_type, self.rms_norm_eps = layer_norm_type, rms_norm_eps
        self.include_bias, self.include_qkv_bias, self.weight_tying = include_bias, include_qkv_bias, weight_tying
        self.vocab_size, self.embedding_size = vocab_size, embedding_size
        self.mask_token_id, self.max_sequence_length = mask_token_id, max_sequence_length
        self.init_std, self.use_cache = init_std, use_cache
        kwargs["tie_word_embeddings"] = False  # LM-head tying is `weight_tying`, done in forward (no shared module)
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    # Derived sizes, used by the modules below.
    @property
    def effective_n_kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def rows(self) -> int:  # rows of the embedding / LM head
        return self.embedding_size or self.vocab_size


def _check_supported(config: LLaDAConfig) -> None:
    """Refuse OLMo options that would change the architecture; everything LLaDA ships passes."""
    flag = partial(getattr, config)
    bad = {"block_type": config.block_type != "llama", "layer_norm_type": config.layer_norm_type != "rms",
           "rope": not config.rope, "activation_type": config.activation_type not in ("silu", "swiglu"),
           "alibi": flag("alibi", False), "attention_layer_norm": flag("attention_layer_norm", False),
           "block_group_size": flag("block_group_size", 1) != 1, "input_emb_norm": flag("input_emb_norm", False),
           "scale_logits": flag("scale_logits", False)}
    if config.d_model % config.n_heads or config.n_heads % config.effective_n_kv_heads:
        raise ValueError("d_model must divide by n_heads, and n_heads by n_kv_heads")
    if any(bad.values()):
        raise NotImplementedError(f"unsupported LLaDA config options: {[k for k, v in bad.items() if v]}")


class LLaDARMSNorm(nn.Module):
    """RMSNorm as in the reference: normalise in float32, cast back, then scale (weight only)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B or 1, T] -> (cos, sin), float32, each [B or 1, 1, T, head_dim] (broadcast over heads)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [B, T, hd]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [B, H, T, hd]; rotate-half RoPE computed in float32, returned in t's dtype."""
    t32 = t.float()
    x1, x2 = t32.chunk(2, dim=-1)
    return (t32 * cos + torch.cat((-x2, x1), dim=-1) * sin).to(t.dtype)


class LLaDALlamaBlock(GradientCheckpointingLayer):
    """One LLaDA layer: x + attn(attn_norm(x)); then x + ff_out(silu(ff_proj(h)) * up_proj(h)), h = ff_norm(x)."""

    def __init__(self, config: LLaDAConfig, layer_idx: int):
        super().__init__()
        d, hd, width, bias = config.d_model, config.head_dim, config.mlp_width, config.include_bias
        self.layer_idx, self.head_dim = layer_idx, hd
        self.n_heads, self.n_kv_heads = config.n_heads, config.effective_n_kv_heads
        qkv_bias = bool(bias or config.include_qkv_bias)
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_proj = nn.Linear(d, width, bias=bias)  # gate branch (gets the SiLU)
        self.up_proj = nn.Linear(d, width, bias=bias)  # linear branch
        self.ff_out = nn.Linear(width, d, bias=bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: Optional[torch.Tensor] = None, past_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                cache_index: Optional[torch.Tensor] = None, return_kv: bool = False):
        """x [B, T, d]; rope = (cos, sin) for the T tokens; attn_mask broadcastable to [B, H, T, S].

        With ``past_kv`` ([B, Hkv, S, hd] each): fresh k/v are written into a copy at ``cache_index`` (LongTensor of
        canvas positions) or appended when it is None. Returns (x [B, T, d], (k, v) over all S keys or None).
        """
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past_kv is not None:
            pk, pv = past_kv
            if cache_index is None:
                k, v = torch.cat((pk, k.to(pk.dtype)), dim=2), torch.cat((pv, v.to(pv.dtype)), dim=2)
            else:  # out-of-place: the caller's cache is never modified
                k, v = pk.index_copy(2, cache_index, k.to(pk.dtype)), pv.index_copy(2, cache_index, v.to(pv.dtype))
        present = (k, v) if return_kv else None
        if self.n_kv_heads != self.n_heads:  # GQA: kv head j serves query heads j*g .. j*g+g-1
            group = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [B, H, S, hd]
        att = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, T, -1))  # [B, T, d]
        h = self.ff_norm(x)
        x = x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, present


class LLaDAModel(nn.Module):
    """The ``model`` submodule: ``transformer`` = ModuleDict(wte, blocks, ln_f[, ff_out]) as in the checkpoints."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        parts = {"wte": nn.Embedding(config.rows, config.d_model),
                 "blocks": nn.ModuleList(LLaDALlamaBlock(config, i) for i in range(config.n_layers)),
                 "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps)}
        if not config.weight_tying:
            parts["ff_out"] = nn.Linear(config.d_model, config.rows, bias=config.include_bias)
        self.transformer = nn.ModuleDict(parts)


def _key_mask(attention_mask: Optional[torch.Tensor], key_len: int) -> Optional[torch.Tensor]:
    """[B, S] 1/0 padding mask -> boolean [B, 1, 1, S] (None if nothing is masked); 4-D masks pass through."""
    if attention_mask is None or attention_mask.dim() == 4:
        return attention_mask
    if attention_mask.shape[-1] != key_len:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} keys, expected {key_len}")
    keep = attention_mask.to(torch.bool)
    if bool(keep.all()):
        return None
    keep = keep | ~keep.any(dim=-1, keepdim=True)  # an all-pad row attends everywhere: finite, never NaN
    return keep[:, None, None, :]


class LLaDAModelLM(PreTrainedModel):
    """LLaDA with its LM head; ``forward`` returns logits over ``embedding_size`` rows for every position."""

    config_class = LLaDAConfig
    accepts_logits_to_keep = True  # `Backbone.logits(keep=…)` runs the LM head on those positions only
    base_model_prefix = "model"
    _no_split_modules = ["LLaDALlamaBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        _check_supported(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "init_std", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, LLaDARMSNorm):
            _init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> Optional[nn.Linear]:
        return None if self.config.weight_tying else self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer.ff_out = value

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                past_key_values: Optional[KVCache] = None, use_cache: Optional[bool] = False,
                cache_positions: Optional[CachePositions] = None, output_hidden_states: Optional[bool] = False,
                return_dict: Optional[bool] = True, logits_to_keep: Union[int, torch.Tensor] = 0, **kwargs: Any):
        """Bidirectional forward over ``input_ids`` [B, T] (or ``inputs_embeds`` [B, T, d]).

        Cache: ``use_cache=True`` returns per-layer (k, v) [B, Hkv, S, hd] (after RoPE). Given ``past_key_values`` for a
        canvas of length S and ``cache_positions`` (slice or 1-D LongTensor, the canvas positions of the T tokens),
        only those tokens are computed, their k/v replace a copy of the cache there, and they attend over all S
        positions (``attention_mask`` is then [B, S]). Without ``cache_positions`` the tokens are appended after the
        cache. ``position_ids`` ([B, T] or [T]) override the RoPE positions. ``logits_to_keep`` (as in transformers:
        an int keeps the last that many positions, a 1-D tensor those positions; 0 keeps all) runs the LM head on
        those positions only, so the logits are [B, K, rows]. Extra kwargs (e.g. labels) are ignored.
        """
        tr = self.model.transformer
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids / inputs_embeds")
        x = tr.wte(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, d]
        T, device = x.shape[1], x.device
        cache_index = None
        if past_key_values is not None:
            past_len = past_key_values[0][0].shape[2]
            if cache_positions is None:  # append after the cached keys
                key_len, positions = past_len + T, torch.arange(past_len, past_len + T, device=device)
            else:
                key_len = past_len
                if isinstance(cache_positions, slice):
                    positions = torch.arange(*cache_positions.indices(past_len), device=device)
                else:
                    positions = torch.as_tensor(cache_positions, device=device).long().reshape(-1)
                if positions.numel() != T:
                    raise ValueError(f"cache_positions select {positions.numel()} positions for {T} tokens")
                cache_index = positions
        elif cache_positions is not None:
            raise ValueError("cache_positions needs past_key_values")
        else:
            key_len, positions = T, torch.arange(T, device=device)
        if position_ids is not None:
            positions = position_ids.to(device)
        positions = positions.reshape(-1, T)  # [B or 1, T]
        rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        mask = _key_mask(attention_mask, key_len)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(x.dtype)

        hidden: list[torch.Tensor] = []
        presents: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, block in enumerate(tr.blocks):
            if output_hidden_states:
                hidden.append(x)
            layer_past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, rope=rope, attn_mask=mask, past_kv=layer_past, cache_index=cache_index,
                               return_kv=bool(use_cache))
            presents.append(present)
        x = tr.ln_f(x)  # [B, T, d]
        if output_hidden_states:
            hidden.append(x)  # as in the reference: the last entry is the normed state fed to the head
        if isinstance(logits_to_keep, torch.Tensor):
            x = x[:, logits_to_keep.to(x.device)]  # [B, K, d]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = F.linear(x, tr.wte.weight) if self.config.weight_tying else tr.ff_out(x)  # [B, T or K, rows]

        past = presents if use_cache else None
        hidden_states = tuple(hidden) if output_hidden_states else None
        if return_dict is False:
            return tuple(o for o in (logits, past, hidden_states) if o is not None)
        return CausalLMOutputWithPast(logits=logits, hidden_states=hidden_states, **{OUTPUT_CACHE_FIELD: past})


def output_cache(output: CausalLMOutputWithPast) -> Optional[KVCache]:
    """The per-layer (k, v) of a forward with ``use_cache=True``, read without transformers' deprecation warning."""
    return getattr(output, OUTPUT_CACHE_FIELD)


def tiny_llada_config(**overrides: Any) -> LLaDAConfig:
    """A 2-layer, d_model-64 LLaDA config for tests (byte-level-sized vocab with mask/eos above 255)."""
    values: dict[str, Any] = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=260,
                                  embedding_size=264, mask_token_id=257, eos_token_id=256, pad_token_id=256,
                                  max_sequence_length=512, rope_theta=10000.0)
    values.update(overrides)
    return LLaDAConfig(**values)


def _register() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForMaskedLM`` resolve ``model_type="llada"``; idempotent."""
    steps = [partial(AutoConfig.register, "llada", LLaDAConfig)]
    steps += [partial(auto.register, LLaDAConfig, LLaDAModelLM) for auto in (AutoModel, AutoModelForMaskedLM)]
    for step in steps:
        try:
            step(exist_ok=True)
        except TypeError:  # pragma: no cover - transformers without `exist_ok`
            try:
                step()
            except ValueError:
                pass


_register()
