"""The authors' DiT forward, re-written in plain tensor operations for the tests (kuleshov-group/mdlm `models/dit.py`,
louaaron/Score-Entropy-Discrete-Diffusion `model/transformer.py` and `model/rotary.py`), reading the weights by their
checkpoint key names: rotary cos/sin laid out (1, T, 3, 1, head_dim) with the v slot the identity, attention as an
explicit softmax over all positions (what flash-attn's varlen kernel computes on full rows), no autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(state, name, x):
    bias = state.get(f"{name}.bias")
    return F.linear(x, state[f"{name}.weight"], bias)


def _layer_norm(x, weight):
    return F.layer_norm(x.float(), [x.shape[-1]]) * weight[None, None, :]


def _rotary(length, inv_freq):
    t = torch.arange(length).type_as(inv_freq)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos()[None, :, None, None, :].repeat(1, 1, 3, 1, 1)
    sin = emb.sin()[None, :, None, None, :].repeat(1, 1, 3, 1, 1)
    cos[:, :, 2], sin[:, :, 2] = 1.0, 0.0
    return cos, sin


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def reference_dit(state: dict, indices: torch.Tensor, sigma: torch.Tensor, n_heads: int, prefix: str = ""):
    """(B, T, V) raw DiT outputs from a state dict with the authors' keys (MDLM: prefix `backbone.`)."""
    s = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
    x = s["vocab_embed.embedding"][indices]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = sigma[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = F.silu(_linear(s, "sigma_map.mlp.2", F.silu(_linear(s, "sigma_map.mlp.0", t_freq))))
    batch, length, dim = x.shape
    cos, sin = _rotary(length, s["rotary_emb.inv_freq"])
    block = 0
    while f"blocks.{block}.attn_qkv.weight" in s:
        p = f"blocks.{block}"
        mods = _linear(s, f"{p}.adaLN_modulation", c)[:, None].chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = _layer_norm(x, s[f"{p}.norm1.weight"]) * (1 + scale_msa) + shift_msa
        qkv = _linear(s, f"{p}.attn_qkv", h).view(batch, length, 3, n_heads, dim // n_heads)
        qkv = qkv * cos + _rotate_half(qkv) * sin
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, hd)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // n_heads), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + gate_msa * _linear(s, f"{p}.attn_out", attended)
        h = _layer_norm(x, s[f"{p}.norm2.weight"]) * (1 + scale_mlp) + shift_mlp
        h = _linear(s, f"{p}.mlp.2", F.gelu(_linear(s, f"{p}.mlp.0", h), approximate="tanh"))
        x = x + gate_mlp * h
        block += 1
    shift, scale = _linear(s, "output_layer.adaLN_modulation", c)[:, None].chunk(2, dim=2)
    return _linear(s, "output_layer.linear", _layer_norm(x, s["output_layer.norm_final.weight"]) * (1 + scale) + shift)


def reference_sedd_log_score(state: dict, indices: torch.Tensor, sigma: torch.Tensor, n_heads: int):
    """SEDD's forward with scale_by_sigma: log-scores, 0 at each input token's column."""
    x = reference_dit(state, indices, sigma, n_heads)
    esigm1_log = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1).log()[:, None, None]
    x = x - esigm1_log - math.log(x.shape[-1] - 1)
    return torch.scatter(x, -1, indices[..., None], torch.zeros_like(x[..., :1]))
