"""The diffusion transformer (DiT) shared by MDLM and SEDD, written for SDPA (no flash-attn), with the authors' names.

MDLM (Sahoo et al. 2024, kuleshov-group/mdlm `models/dit.py`) and SEDD (Lou et al. 2024,
louaaron/Score-Entropy-Discrete-Diffusion `model/transformer.py`) use the same network, read here from both repos:

    x = vocab_embed.embedding[ids]                                   (B, T, d)
    c = SiLU(sigma_map(σ))                                           (B, c_dim)  sinusoidal(σ, 256) → MLP
    per block:  shift, scale, gate (×2) = adaLN_modulation(c)        6 × (B, 1, d)
                x = x + gate_msa · attn_out(attention(rotary(attn_qkv(LN(x)·(1 + scale) + shift))))
                x = x + gate_mlp · mlp(LN(x)·(1 + scale_mlp) + shift_mlp)
    out = output_layer.linear(LN(x)·(1 + scale) + shift)             (B, T, V), adaLN from c again

with parameter-free LayerNorms scaled by a learned `weight`, rotary embeddings on q and k (the "rotate half" form,
which is what flash-attn's `apply_rotary_emb_qkv_` computes), bidirectional attention, GELU(tanh) MLPs of width 4d.
The state-dict keys are the authors' (`vocab_embed.embedding`, `sigma_map.mlp.{0,2}`, `rotary_emb.inv_freq`,
`blocks.{i}.{norm1,attn_qkv,attn_out,norm2,mlp.0,mlp.2,adaLN_modulation}`, `output_layer.{norm_final,linear,
adaLN_modulation}`), so their checkpoints load without renaming.

Where we differ, on purpose and without changing a number for an unpadded batch:
  * attention is `scaled_dot_product_attention`, which equals flash-attn's varlen kernel on full-length rows; a 2-D
    `attention_mask` hides padded keys (the authors never pad);
  * `position_ids` (B, T) may give the rotary positions (the sampler counts them from each prompt's first real token,
    so a left-padded prompt is seen as it is alone); without them positions are 0..T−1 as in the authors' code;
  * no autocast: the model runs in the dtype it was loaded in; LayerNorm statistics are taken in float32 as theirs;
  * `inputs_embeds` may replace the token lookup (prompt tuning prepends learned embeddings).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import DllmPeftError

FREQUENCY_EMBEDDING_SIZE = 256  # width of the sinusoidal σ features, fixed in both repos
MAX_PERIOD = 10_000.0
PICKLED_WEIGHTS = "pytorch_model.bin"  # SEDD's release format


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """What builds a DiT; `model_type` and `vocab_size` are also read by adapters (prompt tuning, prefix)."""

    model_type: str
    vocab_size: int  # rows of the embedding and columns of the output, the mask (absorbing) token included
    hidden_size: int
    cond_dim: int
    n_heads: int
    n_blocks: int
    dropout: float = 0.1
    model_length: int | None = None  # the sequence length it was trained at


class LayerNorm(nn.Module):
    """LayerNorm without bias whose statistics are taken in float32; key `weight` as in both repos."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],)).to(x.dtype) * self.weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, d) with per-sequence shift and scale (B, 1, d)."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """σ (B,) → sinusoidal features (B, 256) → Linear, SiLU, Linear → (B, cond_dim)."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_EMBEDDING_SIZE, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    @staticmethod
    def features(sigma: torch.Tensor) -> torch.Tensor:
        """[cos(σ·f), sin(σ·f)] with f = MAX_PERIOD^(−k/half), k = 0..half−1 (GLIDE's timestep embedding). (B, 256)."""
        half = FREQUENCY_EMBEDDING_SIZE // 2
        frequencies = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / half)
        angles = sigma.float()[:, None] * frequencies.to(sigma.device)[None]  # (B, half)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """σ (B,) → (B, cond_dim) in `dtype`, the model's (its layers may be wrapped by adapters)."""
        return self.mlp(self.features(sigma).to(dtype))


def inverse_frequencies(head_dim: int, base: float = 10_000.0) -> torch.Tensor:
    """RoPE's θ_k = base^(−2k / head_dim), k = 0..head_dim/2 − 1. (head_dim / 2,) float32."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


class Rotary(nn.Module):
    """Rotary frequencies of one head (key `inv_freq`, a buffer both repos save with the weights)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(head_dim))

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions (B, T): each (B, T, 1, head_dim), float32."""
        # recomputed in float32, not read from the buffer: a bfloat16 copy of inv_freq would shift far positions
        frequencies = inverse_frequencies(2 * self.inv_freq.shape[0]).to(position_ids.device)
        angles = position_ids.float()[..., None] * frequencies  # (B, T, head_dim / 2)
        doubled = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # (B, T, 1, head_dim)
        return doubled.cos(), doubled.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half form on x (B, T, H, head_dim), computed in float32."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, T, d), c (B, cond_dim), key_mask (B, 1, 1, T) bool (True = attend) or None. Returns (B, T, d)."""
        batch, length, width = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, -1)
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, T, 3d)
        query, key, value = qkv.view(batch, length, 3, self.n_heads, width // self.n_heads).unbind(dim=2)
        query, key = rotate(query, *rotary), rotate(key, *rotary)  # (B, T, H, hd); v is not rotated
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=key_mask
        )  # (B, H, T, hd)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        x = x + gate_msa * F.dropout(self.attn_out(attended), self.dropout, self.training)
        mlp_out = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * F.dropout(mlp_out, self.dropout, self.training)


class EmbeddingLayer(nn.Module):
    """The token table as one parameter named `embedding` (the authors' key); `weight` is an alias for adapters."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.normal_(self.embedding, std=0.02)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding

    @property
    def num_embeddings(self) -> int:
        return self.embedding.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids]


class FinalLayer(nn.Module):
    def __init__(self, dim: int, vocab_size: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, vocab_size)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, d) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, V)


class DiT(nn.Module):
    """The authors' network: `forward(indices, sigma)` → (B, T, V) raw outputs (MDLM logits, SEDD pre-scores)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.vocab_embed = EmbeddingLayer(config.hidden_size, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_size // config.n_heads)
        self.blocks = nn.ModuleList(
            DiTBlock(config.hidden_size, config.n_heads, config.cond_dim, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.output_layer = FinalLayer(config.hidden_size, config.vocab_size, config.cond_dim)

    def forward(
        self,
        indices: torch.Tensor | None,
        sigma: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            indices: (B, T) token ids (or None with `inputs_embeds` (B, T, d)).
            sigma: (B,) total noise σ of each sequence.
            attention_mask: (B, T) 1 for real tokens, 0 for padding; position_ids: (B, T) rotary positions.
        Returns:
            (B, T, V) outputs of the final layer.
        """
        x = self.vocab_embed(indices) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        batch, length = x.shape[:2]
        c = F.silu(self.sigma_map(sigma.reshape(-1).expand(batch), x.dtype))  # (B, cond_dim)
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device).expand(batch, length)
        rotary = self.rotary_emb(position_ids)
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, rotary, c, key_mask)
        return self.output_layer(x, c)

    def get_input_embeddings(self) -> EmbeddingLayer:
        return self.vocab_embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.output_layer.linear


# -- what MDLM and SEDD share around the network --------------------------------------------------------------------

SIGMA_EPS = 1e-3  # λ is clamped to 1 − ε: σ ≤ −log ε ≈ 6.9, the largest σ of the authors' log-linear schedules


def sigma_from_noise_level(noise_level: torch.Tensor) -> torch.Tensor:
    """σ = −log(1 − λ): an absorbing-state model masks a token with probability 1 − e^(−σ), so a masked fraction λ is
    the noise σ whatever the schedule that produced it. λ is clamped to [0, 1 − ε] (σ finite at λ = 1).

    Args:
        noise_level: (B,) masked fractions λ.
    Returns:
        (B,) float32 σ.
    """
    return -torch.log1p(-noise_level.float().clamp(0.0, 1.0 - SIGMA_EPS))


def noise_level_of(input_ids: torch.Tensor, mask_id: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """λ read off a canvas when the caller gives none: the masked fraction of its real tokens. (B,) float32."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    masked = (input_ids == mask_id) & real
    return masked.sum(dim=1).float() / real.sum(dim=1).clamp(min=1).float()


def refuse_cache(use_cache: bool | None, past_key_values) -> None:
    if use_cache or past_key_values is not None:
        raise DllmPeftError(
            "MDLM and SEDD are conditioned on the noise level, which changes every step, so cached keys and values "
            "would be stale; sample them with --cache none"
        )


def denoiser_logits(raw: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The denoiser's logits: the network's outputs with the mask (absorbing) column at −∞, so the softmax over the
    other columns is the distribution of the clean token (MDLM's SUBS parameterisation; SEDD: see `sedd.py`)."""
    return raw.index_fill(-1, torch.tensor([mask_id], device=raw.device), float("-inf"))  # (B, T, V)


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: `*.safetensors` files (one or shards), else `pytorch_model.bin` read
    with `torch.load(weights_only=True)` (tensors and plain containers only, never arbitrary pickled objects)."""
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        return state
    pickled = directory / PICKLED_WEIGHTS
    if not pickled.is_file():
        raise DllmPeftError(f"{directory} holds no weights (model.safetensors or {PICKLED_WEIGHTS}); pass the "
                            "directory the checkpoint was downloaded to")
    try:
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others for files that are not plain tensors
        raise DllmPeftError(f"{pickled} cannot be read as plain tensors ({type(error).__name__}); convert it to "
                            "model.safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise DllmPeftError(f"{pickled} is not a dictionary of tensors; convert it to model.safetensors")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], directory: Path, dtype: torch.dtype,
                 device: torch.device) -> nn.Module:
    """Copy `state` into `model` (built on the meta device) in `dtype` on `device`; every parameter must be there.

    `rotary_emb.inv_freq` is recomputed rather than required: it is a function of the head size.
    """
    expected = model.state_dict()
    missing = sorted(name for name in expected if name not in state and not name.endswith("rotary_emb.inv_freq"))
    unexpected = sorted(name for name in state if name not in expected)
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise DllmPeftError(
            f"the weights in {directory} do not match its config ({len(missing)} missing, {len(unexpected)} "
            f"unexpected; first: {first}); the checkpoint is incomplete or its config.json belongs to another model"
        )
    model.to_empty(device=device)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("rotary_emb.inv_freq"):
                tensor.copy_(inverse_frequencies(2 * tensor.shape[0]))
            else:
                tensor.copy_(state[name])
    return model.to(dtype=dtype)
