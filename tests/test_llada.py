"""Tests for the native LLaDA implementation (dllm_peft.models.llada). CPU only, tiny configs, fixed seeds."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from dllm_peft.models.llada import (
    LLaDAConfig,
    LLaDAModelLM,
    _register,
    tiny_llada_config,
)

BLOCK_KEYS = ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def make_model(seed: int = 0, **overrides) -> LLaDAModelLM:
    torch.manual_seed(seed)
    model = LLaDAModelLM(tiny_llada_config(**overrides)).eval()
    with torch.no_grad():  # non-trivial norm weights so that a mix-up of norms would show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_state_dict_keys_match_reference_layout():
    expected = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    for i in range(2):
        expected |= {f"model.transformer.blocks.{i}.{name}.weight" for name in BLOCK_KEYS}
    assert set(make_model().state_dict()) == expected
    tied = make_model(weight_tying=True)
    assert set(tied.state_dict()) == expected - {"model.transformer.ff_out.weight"}
    assert tied(ids(1, 5)).logits.shape == (1, 5, 264)


def test_llada_8b_shapes_on_meta():
    config = LLaDAConfig()  # defaults are LLaDA-8B's
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 32 * 9 + 3
    assert shapes["model.transformer.wte.weight"] == (126464, 4096)
    assert shapes["model.transformer.ff_out.weight"] == (126464, 4096)
    assert shapes["model.transformer.blocks.0.ff_proj.weight"] == (12288, 4096)
    assert shapes["model.transformer.blocks.0.up_proj.weight"] == (12288, 4096)
    assert shapes["model.transformer.blocks.31.ff_out.weight"] == (4096, 12288)
    assert shapes["model.transformer.blocks.0.k_proj.weight"] == (4096, 4096)


def _write_reference_checkpoint(model: LLaDAModelLM, path) -> None:
    config = {
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128, "mlp_ratio": 4,
        "activation_type": "silu", "block_type": "llama", "rope": True, "rope_theta": 10000.0,
        "layer_norm_type": "rms", "rms_norm_eps": 1e-05, "include_bias": False, "weight_tying": False,
        "vocab_size": 260, "embedding_size": 264, "mask_token_id": 257, "eos_token_id": 256, "pad_token_id": 256,
        "max_sequence_length": 512, "use_cache": False,
        # OLMo leftovers present in the real config.json: accepted and ignored.
        "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0, "flash_attention": False,
        "init_fn": "mitchell", "init_device": "meta", "init_std": 0.02, "precision": "amp_bf16",
        "rope_full_precision": True, "multi_query_attention": None, "block_group_size": 1,
    }
    (path / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(path / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def test_load_reference_layout_checkpoint_and_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = make_model()
    tokens = ids(2, 9)
    with torch.no_grad():
        expected = source(tokens).logits
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    _write_reference_checkpoint(source, ref_dir)

    config = transformers.AutoConfig.from_pretrained(ref_dir, local_files_only=True)
    assert isinstance(config, LLaDAConfig) and config.mlp_hidden_size == 128 and config.init_fn == "mitchell"
    direct = LLaDAModelLM.from_pretrained(ref_dir, local_files_only=True, low_cpu_mem_usage=True).eval()
    auto = transformers.AutoModel.from_pretrained(ref_dir, local_files_only=True).eval()
    assert isinstance(auto, LLaDAModelLM)
    with torch.no_grad():
        assert torch.equal(direct(tokens).logits, expected)
        assert torch.equal(auto(tokens).logits, expected)

    out_dir = tmp_path / "saved"
    direct.save_pretrained(out_dir, max_shard_size="40KB")
    assert len(list(out_dir.glob("*.safetensors"))) >= 2 and (out_dir / "model.safetensors.index.json").exists()
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(out_dir, local_files_only=True).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, expected)


def test_register_is_idempotent():
    _register()
    _register()
    assert transformers.AutoConfig.for_model("llada").__class__ is LLaDAConfig


def _explicit_forward(model: LLaDAModelLM, tokens: torch.Tensor) -> torch.Tensor:
    """LLaDA written out longhand from the spec (no shared helpers): pins SwiGLU order, RoPE and norms."""
    cfg, tr = model.config, model.model.transformer
    hd, theta = cfg.d_model // cfg.n_heads, cfg.rope_theta

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    T = tokens.shape[1]
    angle = torch.arange(T, dtype=torch.float32)[:, None] * theta ** (-torch.arange(0, hd, 2) / hd)  # [T, hd/2]
    cos, sin = angle.cos(), angle.sin()

    def rope(t):  # t [B, H, T, hd]: rotate (first half, second half) pairs (i, i + hd/2)
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    x = tr.wte.weight[tokens]
    for blk in tr.blocks:
        h = rms(x, blk.attn_norm.weight)
        q, k, v = (F.linear(h, p.weight).unflatten(-1, (-1, hd)).transpose(1, 2)
                   for p in (blk.q_proj, blk.k_proj, blk.v_proj))
        q, k = rope(q), rope(k)
        k, v = (t.repeat_interleave(cfg.n_heads // t.shape[1], dim=1) for t in (k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1) @ v  # no causal mask
        x = x + F.linear(att.transpose(1, 2).flatten(2), blk.attn_out.weight)
        h = rms(x, blk.ff_norm.weight)
        x = x + F.linear(F.silu(F.linear(h, blk.ff_proj.weight)) * F.linear(h, blk.up_proj.weight), blk.ff_out.weight)
    return F.linear(rms(x, tr.ln_f.weight), tr.ff_out.weight)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_matches_longhand_math(n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    tokens = ids(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, _explicit_forward(model, tokens), atol=1e-5, rtol=0)


def test_attention_is_bidirectional():
    model = make_model()
    a = ids(1, 10)
    b = a.clone()
    b[0, -1] = (b[0, -1] + 1) % 256
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    assert not torch.allclose(la[0, 0], lb[0, 0])


def test_grouped_query_attention_matches_repeated_heads():
    gqa = make_model(n_kv_heads=2)
    block = gqa.model.transformer.blocks[0]
    assert tuple(block.k_proj.weight.shape) == (2 * 16, 64) and tuple(block.v_proj.weight.shape) == (2 * 16, 64)
    # The same function as an MHA model whose k/v head j is copied to query heads 2j and 2j+1.
    mha = LLaDAModelLM(tiny_llada_config()).eval()
    state = {}
    for key, value in gqa.state_dict().items():
        if key.endswith(("k_proj.weight", "v_proj.weight")):
            value = value.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
        state[key] = value
    mha.load_state_dict(state)
    tokens = ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(gqa(tokens).logits, mha(tokens).logits, atol=1e-5, rtol=0)


def test_hidden_states_and_tuple_output():
    model = make_model()
    tokens = ids(1, 6)
    with torch.no_grad():
        out = model(tokens, output_hidden_states=True)
        logits, hidden = model(tokens, output_hidden_states=True, return_dict=False)
    assert len(out.hidden_states) == 3 and torch.equal(hidden[-1], out.hidden_states[-1])
    assert torch.equal(out.hidden_states[0], model.model.transformer.wte(tokens))
    assert torch.equal(model.model.transformer.ff_out(out.hidden_states[-1]), out.logits)
    assert torch.equal(logits, out.logits)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_unbatched(side):
    model = make_model()
    lengths = [9, 5, 7]
    seqs = [ids(1, n, seed=10 + n)[0] for n in lengths]
    L = max(lengths)
    batch = torch.full((len(seqs), L), 256, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(L - len(seq), L)
        batch[row, span], mask[row, span] = seq, 1
    with torch.no_grad():
        batched = model(batch, attention_mask=mask).logits
        for row, seq in enumerate(seqs):
            alone = model(seq[None]).logits[0]
            real = mask[row].bool()
            torch.testing.assert_close(batched[row][real], alone, atol=1e-5, rtol=0)


def test_fully_padded_row_is_finite():
    model = make_model()
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1] = 0
    with torch.no_grad():
        logits = model(ids(2, 6), attention_mask=mask).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("positions", [slice(10, 16), slice(4, 9), torch.tensor([2, 3, 11, 12])],
                         ids=["prefix-cache", "dual-cache", "index-tensor"])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_kv_cache_matches_full_forward(positions, n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    canvas = ids(2, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :3] = 0  # left padding in the second row
    with torch.no_grad():
        full = model(canvas, attention_mask=mask, use_cache=True)
        cache = full.past_key_values
        assert len(cache) == 2 and tuple(cache[0][0].shape) == (2, n_kv_heads, 16, 16)
        before = [k.clone() for k, _ in cache]
        part = model(canvas[:, positions], attention_mask=mask, past_key_values=cache, cache_positions=positions,
                     use_cache=True)
    torch.testing.assert_close(part.logits, full.logits[:, positions], atol=1e-5, rtol=0)
    for layer, (k, v) in enumerate(part.past_key_values):  # refreshed copy over the whole canvas
        torch.testing.assert_close(k, cache[layer][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(v, cache[layer][1], atol=1e-5, rtol=0)
    assert all(torch.equal(k, b) for (k, _), b in zip(cache, before))  # the caller's cache is untouched


def test_kv_cache_append_without_positions():
    model = make_model()
    canvas = ids(1, 12)
    with torch.no_grad():
        prefix = model(canvas[:, :8], use_cache=True).past_key_values
        tail = model(canvas[:, 8:], past_key_values=prefix, use_cache=True)
        # Same as writing the tail into a canvas-sized cache whose tail slots hold junk.
        padded = [tuple(torch.cat((t, torch.randn(1, 4, 4, 16)), dim=2) for t in kv) for kv in prefix]
        placed = model(canvas[:, 8:], past_key_values=padded, cache_positions=slice(8, 12), use_cache=True)
    torch.testing.assert_close(tail.logits, placed.logits, atol=1e-5, rtol=0)
    assert tuple(tail.past_key_values[0][0].shape) == (1, 4, 12, 16)


def _loss_and_grads(model: LLaDAModelLM, tokens: torch.Tensor, mask: torch.Tensor):
    model.train()
    model.zero_grad()
    logits = model(tokens, attention_mask=mask).logits
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none")
    loss = (loss * mask.flatten()).sum() / mask.sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_same_loss_and_grads():
    tokens = ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 7:] = 0
    plain = make_model()
    loss0, grads0 = _loss_and_grads(plain, tokens, mask)

    calls = []

    def context_fn():
        calls.append(1)
        return torch.utils.checkpoint.noop_context_fn()

    ckpt = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation_checkpointing_enable
        ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                          "context_fn": context_fn})
    assert all(block.gradient_checkpointing for block in ckpt.model.transformer.blocks)
    loss1, grads1 = _loss_and_grads(ckpt, tokens, mask)
    assert len(calls) == 2  # one checkpointed region per block: our kwargs reached torch.utils.checkpoint
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=0)
    assert grads1.keys() == grads0.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5)


def test_config_validation():
    swiglu = LLaDAModelLM(tiny_llada_config(activation_type="swiglu"))  # alias: same gated MLP, nothing halved
    assert swiglu.model.transformer.blocks[0].ff_out.in_features == 128
    with pytest.raises(NotImplementedError):
        LLaDAModelLM(tiny_llada_config(block_type="sequential"))
    with pytest.raises(ValueError):
        LLaDAModelLM(tiny_llada_config(n_kv_heads=3))
    with pytest.raises(ValueError):
        make_model()(ids(1, 4), cache_positions=slice(0, 4))
