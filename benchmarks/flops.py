"""FLOP accounting for the benchmarks: how much arithmetic a training step, a sampler step or a likelihood pass needs.

Counted from the model config alone (LLaDA, Dream/Qwen2 and BERT-style masked LMs), so that a measured time turns
into achieved FLOP/s and MFU (model FLOP utilisation: achieved ÷ peak). Conventions, as in the MFU literature
(Chowdhery et al. 2022, PaLM, appendix B):
  * only matrix products count, 2 FLOPs per multiply-add; norms, activations, softmax, RoPE and dropout do not;
  * attention is bidirectional: T queries against S keys cost 2·T·S·hd for Q·Kᵀ and as much for P·V, per head;
  * *model* FLOPs: a block recomputed by gradient checkpointing is not counted again (`recompute=True` gives the
    hardware count instead).

Backward follows autograd exactly (the unit test compares with `torch.utils.flop_counter.FlopCounterMode`): a
frozen base computes activation gradients only (one product per forward product, none for weights), an adapter
computes both (two per forward product), and nothing is computed for what needs no gradient -- the embeddings are
frozen, so the inputs of the first block's q/k/v projections get none.

    shape = shape_of(LLaDAConfig())                    # LLaDA-8B
    training_step_flops(shape, tokens=512, adapter=AdapterShape(32, core=True))["total"] / 512   # per token
    with FlopMeter(model, shape, adapter) as meter: sample(...)   # counts every forward the model really ran
"""

from __future__ import annotations

import dataclasses
from typing import Any

ROLES = ("q", "k", "v", "o")  # adapter targets by role: the attention projections of every family


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes FLOPs depend on."""

    family: str  # llada, dream or masked-lm
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_width: int
    mlp_matrices: int  # 3 for a gated MLP (LLaDA, Dream), 2 for BERT's
    vocab: int  # rows of the LM head
    head_transform: bool = False  # BERT's MLM head runs a d × d dense layer before the decoder

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    def projection(self, role: str) -> tuple[int, int]:
        """(in, out) of the attention projection `role`."""
        return {"q": (self.d_model, self.q_width), "k": (self.d_model, self.kv_width),
                "v": (self.d_model, self.kv_width), "o": (self.q_width, self.d_model)}[role]


@dataclasses.dataclass(frozen=True)
class AdapterShape:
    """A low-rank adapter on some attention projections of every layer (LoRA; NaRA with `core`)."""

    rank: int
    roles: tuple[str, ...] = ROLES
    core: bool = False  # NaRA: one extra (…, r) × (r, r) product per adapted projection
    hypernetwork: tuple[int, ...] = ()  # NaRA's F: embedding width and hidden widths, e.g. (64, 256, 512)


def lora(rank: int = 32) -> AdapterShape:
    return AdapterShape(rank)


def nara(rank: int = 32) -> AdapterShape:
    """NaRA as the released recipes build it: F = Linear(64→256) → Linear(256→512) → Linear(512→r²)."""
    return AdapterShape(rank, core=True, hypernetwork=(64, 256, 512))


def shape_of(config: Any) -> ModelShape:
    """The shape of a LLaDA, Dream (Qwen2) or BERT-style masked-LM config."""
    if hasattr(config, "d_model") and hasattr(config, "n_layers"):  # LLaDA's own field names
        kv = config.n_kv_heads or config.n_heads
        width = config.mlp_hidden_size or config.mlp_ratio * config.d_model
        return ModelShape("llada", config.d_model, config.n_layers, config.n_heads, kv, config.d_model // config.n_heads,
                          width, 3, config.embedding_size or config.vocab_size)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if str(getattr(config, "model_type", "")).lower() in ("dream", "qwen2"):
        kv = getattr(config, "num_key_value_heads", None) or heads
        return ModelShape("dream", config.hidden_size, config.num_hidden_layers, heads, kv, head_dim,
                          config.intermediate_size, 3, config.vocab_size)
    return ModelShape("masked-lm", config.hidden_size, config.num_hidden_layers, heads, heads, head_dim,
                      config.intermediate_size, 2, config.vocab_size, head_transform=True)


def hypernetwork_flops(adapter: AdapterShape | None, backward: bool = False) -> int:
    """NaRA's F for one noise level: forward, or forward + backward (its input, the embedding, needs no gradient)."""
    if adapter is None or not adapter.hypernetwork:
        return 0
    widths = [*adapter.hypernetwork, adapter.rank * adapter.rank]
    products = [2 * a * b for a, b in zip(widths[:-1], widths[1:])]
    if not backward:
        return sum(products)
    return sum(products) + sum(products) + sum(products[1:])  # forward, weight grads, input grads but the first


def _pass_flops(shape: ModelShape, tokens: int, keys: int, head_tokens: int, adapter: AdapterShape | None,
                backward: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs of one sequence: `tokens` computed positions attending over `keys` keys, the LM
    head on `head_tokens` positions. Backward computes what autograd computes when only the adapter trains."""
    adapted = set(adapter.roles) if adapter else set()
    forward = grads = 0
    stream_needs_grad = False  # the residual stream: the embeddings are frozen
    for _ in range(shape.n_layers):
        # attention: x → q, k, v → softmax(q kᵀ) v → o
        needs = {}
        for role in ("q", "k", "v"):
            size_in, size_out = shape.projection(role)
            forward += 2 * tokens * size_in * size_out
            grads += 2 * tokens * size_in * size_out if stream_needs_grad else 0  # d input; W is frozen
            if role in adapted:
                forward, grads = _adapter(forward, grads, tokens, size_in, size_out, adapter, stream_needs_grad)
            needs[role] = stream_needs_grad or role in adapted
        product = 2 * tokens * keys * shape.head_dim * shape.n_heads  # one of q·kᵀ, p·v
        forward += 2 * product
        if any(needs.values()):
            grads += product * (1 + needs["q"] + needs["k"] + needs["v"])  # dP = dO·vᵀ, then dq, dk, dv
        attention_needs_grad = any(needs.values())
        size_in, size_out = shape.projection("o")
        forward += 2 * tokens * size_in * size_out
        grads += 2 * tokens * size_in * size_out if attention_needs_grad else 0
        if "o" in adapted:
            forward, grads = _adapter(forward, grads, tokens, size_in, size_out, adapter, attention_needs_grad)
        stream_needs_grad = stream_needs_grad or attention_needs_grad or "o" in adapted
        # MLP: (mlp_matrices - 1) projections up, one down
        mlp = 2 * tokens * shape.d_model * shape.mlp_width * shape.mlp_matrices
        forward += mlp
        grads += mlp if stream_needs_grad else 0
    head = 2 * head_tokens * shape.d_model * (shape.vocab + (shape.d_model if shape.head_transform else 0))
    forward += head
    grads += head if stream_needs_grad else 0
    return forward, (grads if backward else 0)


def _adapter(forward: int, grads: int, tokens: int, size_in: int, size_out: int, adapter: AdapterShape,
             input_needs_grad: bool) -> tuple[int, int]:
    """Add one adapted projection: A (r × in), [C (r × r)], B (out × r); weights and their inputs get gradients."""
    r = adapter.rank
    down, core, up = 2 * tokens * size_in * r, (2 * tokens * r * r if adapter.core else 0), 2 * tokens * r * size_out
    forward += down + core + up
    grads += up + up  # dB and d(mixed)
    grads += core + core  # dC and d(down)
    grads += down + (down if input_needs_grad else 0)  # dA and d(input)
    return forward, grads


def forward_flops(shape: ModelShape, tokens: int, keys: int | None = None, head_tokens: int | None = None,
                  adapter: AdapterShape | None = None, batch: int = 1) -> int:
    """One forward of `batch` sequences (a sampler step, a likelihood pass); keys default to tokens (no cache),
    head_tokens to tokens (logits everywhere). NaRA's F is not included (see `hypernetwork_flops`)."""
    keys = tokens if keys is None else keys
    head_tokens = tokens if head_tokens is None else head_tokens
    return batch * _pass_flops(shape, tokens, keys, head_tokens, adapter, backward=False)[0]


def training_step_flops(shape: ModelShape, tokens: int, adapter: AdapterShape | None, batch: int = 1,
                        noise_levels: int | None = None, recompute: bool = False) -> dict[str, int]:
    """FLOPs of one training step (logits at every position, loss, backward) over `batch` sequences of `tokens`.

    Args:
        noise_levels: distinct λ per forward (NaRA runs F once for each); default `batch`.
        recompute: count the blocks' second forward under gradient checkpointing (hardware, not model, FLOPs).
    Returns:
        forward, backward, hypernetwork and total FLOPs; total / (batch · tokens) is the per-token figure.
    """
    forward, backward = _pass_flops(shape, tokens, tokens, tokens, adapter, backward=True)
    forward, backward = batch * forward, batch * backward
    hyper = (batch if noise_levels is None else noise_levels) * hypernetwork_flops(adapter, backward=True)
    again = batch * (forward_flops(shape, tokens, head_tokens=0, adapter=adapter)) if recompute else 0
    return {"forward": forward, "backward": backward, "hypernetwork": hyper, "recompute": again,
            "total": forward + backward + hyper + again}


def per_token(shape: ModelShape, tokens: int, adapter: AdapterShape | None, block_length: int = 32) -> dict:
    """FLOPs per token at sequence length `tokens`: a training step; a sampler step without a cache (the whole
    canvas runs, the LM head on the `block_length` positions of the current block); a likelihood pass (head
    everywhere)."""
    return {
        "training_step": training_step_flops(shape, tokens, adapter)["total"] / tokens,
        "sampler_step": forward_flops(shape, tokens, head_tokens=block_length, adapter=adapter) / tokens,
        "likelihood_pass": forward_flops(shape, tokens, adapter=adapter) / tokens,
    }


class FlopMeter:
    """Counts the forward FLOPs of every call of `model` inside the `with` block, from the shapes it was called with.

    Reads `input_ids` (B, T), `past_key_values` with `cache_positions` (the T tokens attend over the cached S keys)
    and `logits_to_keep` (the LM head runs on those positions only), as our LLaDA and Dream classes take them.
    """

    def __init__(self, model, shape: ModelShape, adapter: AdapterShape | None = None):
        self.model, self.shape, self.adapter = model, shape, adapter
        self.flops = 0
        self.calls = 0
        self._handle = None

    def __enter__(self) -> FlopMeter:
        self._handle = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        batch, tokens = ids.shape[0], ids.shape[1]
        keys = tokens
        past = kwargs.get("past_key_values")
        if past is not None:
            cached = past[0][0].shape[2]
            keys = cached if kwargs.get("cache_positions") is not None else cached + tokens
        keep = kwargs.get("logits_to_keep", 0)
        head = keep.numel() if hasattr(keep, "numel") else (keep or tokens)
        self.flops += forward_flops(self.shape, tokens, keys, head, self.adapter, batch)
        self.calls += 1


def matmul_peak(dtype, device: str = "cpu", size: int = 1024, seconds: float = 1.0, clock=None) -> dict[str, float]:
    """The best FLOP/s of `size` × `size` matrix products in `dtype` on `device`, with this process's threads.

    `clock` (default: `time.thread_time` on CPU, wall clock with synchronisation on CUDA) should be the clock the
    measured work is timed with, so that the ratio compares like with like.
    """
    import time

    import torch

    cuda = device.startswith("cuda")
    if clock is None:
        clock = time.perf_counter if cuda else time.thread_time
    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    repeats, best = 1, 0.0
    began = clock()
    while clock() - began < seconds:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        for _ in range(repeats):
            torch.mm(left, right, out=out)
        if cuda:
            torch.cuda.synchronize()
        elapsed = clock() - start
        if elapsed > 0:
            best = max(best, 2 * size**3 * repeats / elapsed)
        if elapsed < 0.05:
            repeats *= 2
    return {"flops_per_second": best, "size": size, "dtype": str(dtype).removeprefix("torch.")}
