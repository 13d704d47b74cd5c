"""The conformance matrix: every registered method passes the same checks, on LLaDA and on the time-conditioned
DiTs MDLM and SEDD (prefix tuning needs LLaDA's KV cache: on the DiTs it must refuse in one sentence)."""

from __future__ import annotations

import pytest
import torch

from dllm_peft.adapters.base import (
    adapter_state_dict,
    inject,
    trainable_parameters,
    unload,
)
from dllm_peft.adapters.files import load_adapter, save_adapter
from dllm_peft.adapters.registry import METHODS, build_adapter_config
from dllm_peft.diffusion.conditioning import noise_level
from dllm_peft.diffusion.loss import masked_diffusion_loss
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import tiny_llada

from .conftest import randomize_adapter
from .tiny_checkpoints import tiny_dit

METHOD_NAMES = sorted(METHODS)
BACKBONES = {
    "llada": tiny_llada,
    "mdlm": lambda seed=0: tiny_dit("mdlm", seed),
    "sedd": lambda seed=0: tiny_dit("sedd", seed),
}
LLADA_ONLY = {"prefix"}  # the KV-cache layout it writes into
CASES = [
    pytest.param(method, family, id=f"{method}-{family}")
    for family in BACKBONES
    for method in METHOD_NAMES
    if family == "llada" or method not in LLADA_ONLY
]


def injected(method: str, family: str = "llada", seed: int = 0, **settings):
    backbone = BACKBONES[family](seed=seed)
    config = build_adapter_config(method, rank=4, dropout=0.0, **settings)
    inject(backbone.model, config, METHODS[method].layer_class, backbone.default_targets)
    backbone.model.eval()  # the DiTs' own dropout is off in these checks, as LLaDA has none
    return backbone


def logits_at(backbone, input_ids, level=0.5):
    with torch.no_grad(), noise_level(backbone.model, level):
        return backbone.logits(input_ids, noise_level=level)


@pytest.mark.parametrize("family", ["mdlm", "sedd"])
@pytest.mark.parametrize("method", sorted(LLADA_ONLY))
def test_llada_only_methods_refuse_the_dits_in_one_sentence(method, family):
    with pytest.raises(DllmPeftError, match="use --method prompt"):
        injected(method, family)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_fresh_adapter_is_a_no_op_where_the_method_allows(method, family, batch):
    """Exactly the base model's logits; methods that add virtual tokens cannot start so (attention sees them)."""
    base = logits_at(BACKBONES[family](seed=0), batch.input_ids)
    backbone = injected(method, family)
    adapted = logits_at(backbone, batch.input_ids)
    if METHODS[method].starts_as_base:
        assert torch.equal(base, adapted)
    else:
        predictions = adapted.index_fill(-1, torch.tensor([backbone.mask_id]), 0.0)  # the DiTs' mask column is −∞
        assert adapted.shape == base.shape and torch.isfinite(predictions).all() and not torch.equal(base, adapted)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_save_load_round_trip_is_exact(method, family, batch, tmp_path):
    trained = injected(method, family)
    randomize_adapter(trained.model)
    save_adapter(trained, tmp_path / "adapter")
    fresh = BACKBONES[family](seed=0)
    record = load_adapter(fresh, tmp_path / "adapter")
    assert record["method"] == method
    for name, tensor in adapter_state_dict(trained.model).items():
        assert torch.equal(tensor, adapter_state_dict(fresh.model)[name]), name
    for level in (0.1, 0.9):
        assert torch.equal(logits_at(trained, batch.input_ids, level), logits_at(fresh, batch.input_ids, level))


@pytest.mark.parametrize(("method", "family"), CASES)
def test_unload_restores_the_base_bit_for_bit(method, family):
    backbone = BACKBONES[family](seed=0)
    before = {name: tensor.clone() for name, tensor in backbone.model.state_dict().items()}
    modules_before = dict(backbone.model.named_modules())
    inject(backbone.model, build_adapter_config(method, rank=4), METHODS[method].layer_class, backbone.default_targets)
    randomize_adapter(backbone.model)
    unload(backbone.model)
    after = backbone.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(modules_before[name] is module for name, module in backbone.model.named_modules())
    assert all(p.requires_grad for p in backbone.model.parameters())


@pytest.mark.parametrize(("method", "family"), CASES)
def test_only_adapter_parameters_are_trainable(method, family):
    backbone = injected(method, family)
    adapter = {id(t) for t in adapter_state_dict(backbone.model).values() if isinstance(t, torch.nn.Parameter)}
    assert adapter and {id(p) for p in trainable_parameters(backbone.model)} == adapter


@pytest.mark.parametrize(("method", "family"), CASES)
def test_every_adapter_parameter_gets_a_gradient_within_two_steps(method, family, batch):
    """After at most two optimizer steps every adapter parameter has a non-zero gradient.

    Zero-initialised factors delay some gradients: B = 0 silences A's gradient until the first update, and NaRA's
    zero last hypernetwork layer silences the earlier layers until the second. So: backward, step, backward, step,
    backward — three gradients, two optimizer steps.
    """
    backbone = injected(method, family)
    backbone.model.train()
    parameters = dict((n, p) for n, p in backbone.model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(parameters.values(), lr=1e-2)
    touched = set()
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, generator=generator)
        out.loss.backward()
        touched |= {n for n, p in parameters.items() if p.grad is not None and p.grad.abs().sum() > 0}
        if step < 2:
            optimizer.step()
        optimizer.zero_grad()
    assert touched == set(parameters), sorted(set(parameters) - touched)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_logits_at_kept_positions_equal_the_full_logits_there(method, family, batch):
    """The log-likelihood scores only masked positions through `Backbone.logits(keep=…)`; every method (virtual
    tokens, hooks on the head, noise routing) gives there exactly what the full logits give."""
    backbone = injected(method, family)
    randomize_adapter(backbone.model)
    backbone.model.eval()
    keep = torch.tensor([1, 5, batch.input_ids.shape[1] - 1])
    for level in (0.2, 0.9):
        with torch.no_grad(), noise_level(backbone.model, level):
            full = backbone.logits(batch.input_ids, batch.attention_mask, noise_level=level)
            kept = backbone.logits(batch.input_ids, batch.attention_mask, keep=keep, noise_level=level)
        torch.testing.assert_close(kept, full[:, keep], atol=1e-5, rtol=0)
