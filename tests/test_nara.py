"""NaRA's defining identities (method-facts.md): it starts as LoRA, mixes λ per sample, and is a LoRA at fixed λ."""

from __future__ import annotations

import pytest
import torch

from dllm_peft.adapters.base import adapter_layers, inject
from dllm_peft.adapters.lora import LoraConfig, LoraLayer
from dllm_peft.adapters.nara import NaraCConfig, NaraConfig, NaraLayer, NoiseCore
from dllm_peft.diffusion.conditioning import (
    NoiseLevelMissing,
    enable_gradient_checkpointing,
    find_router,
    noise_level,
)
from dllm_peft.diffusion.loss import masked_diffusion_loss
from dllm_peft.models import tiny_llada

from .conftest import randomize_adapter


def nara_backbone(**settings):
    backbone = tiny_llada(seed=0)
    inject(backbone.model, NaraConfig(rank=4, dropout=0.0, **settings), NaraLayer, backbone.default_targets)
    return backbone


def logits(backbone, input_ids, level):
    with torch.no_grad(), noise_level(backbone.model, level):
        return backbone.logits(input_ids)


def test_hypernetwork_has_the_reference_parameter_count_at_rank_32():
    core = NoiseCore(NaraConfig(rank=32))
    assert sum(p.numel() for p in core.parameters()) == 673_536


def test_one_hypernetwork_is_shared_by_all_modules_unless_grouped():
    assert list(find_router(nara_backbone().model).shared) == ["shared"]
    grouped = nara_backbone(groups=(("q_proj", "k_proj"), ("v_proj", "attn_out")))
    assert list(find_router(grouped.model).shared) == ["group0", "group1"]
    cores = {layer.core_key for layer in adapter_layers(grouped.model).values()}
    assert cores == {"group0", "group1"}


def copy_into_lora(nara, b_transform=lambda layer, b: b):
    lora = tiny_llada(seed=0)
    inject(lora.model, LoraConfig(rank=4, dropout=0.0), LoraLayer, lora.default_targets)
    nara_layers, lora_layers = adapter_layers(nara.model), adapter_layers(lora.model)
    with torch.no_grad():
        for name, layer in nara_layers.items():
            lora_layers[name].lora_A.copy_(layer.lora_A)
            lora_layers[name].lora_B.copy_(b_transform(layer, layer.lora_B))
    return lora


def test_with_zero_hypernetwork_output_nara_equals_lora(batch):
    nara = nara_backbone()
    with torch.no_grad():
        for layer in adapter_layers(nara.model).values():
            layer.lora_B.normal_(0, 0.1)  # B ≠ 0 so the update is real; F's last layer is still zero
    lora = copy_into_lora(nara)
    for level in (0.0, 0.37, 1.0):
        torch.testing.assert_close(logits(nara, batch.input_ids, level), logits(lora, batch.input_ids, level))


def test_at_a_fixed_noise_level_nara_is_the_lora_with_b_times_c(batch):
    nara = nara_backbone()
    randomize_adapter(nara.model, scale=0.2)
    level = 0.3
    core = find_router(nara.model).shared["shared"](torch.tensor([level]))[0]  # (r, r)
    lora = copy_into_lora(nara, lambda layer, b: b @ core)
    torch.testing.assert_close(logits(nara, batch.input_ids, level), logits(lora, batch.input_ids, level))


def test_a_batch_of_mixed_noise_levels_equals_each_sample_alone(batch):
    nara = nara_backbone()
    randomize_adapter(nara.model, scale=0.2)
    levels = torch.tensor([0.05, 0.5, 0.8, 1.0])
    together = logits(nara, batch.input_ids, levels)
    for row, level in enumerate(levels):
        alone = logits(nara, batch.input_ids[row : row + 1], float(level))
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], logits(nara, batch.input_ids, 0.9)[0])


def test_training_makes_the_core_depend_on_the_noise_level(batch):
    nara = nara_backbone()
    nara.model.train()
    optimizer = torch.optim.AdamW([p for p in nara.model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        masked_diffusion_loss(nara, batch.input_ids, batch.response_mask, generator=generator).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    core = find_router(nara.model).shared["shared"]
    with torch.no_grad():
        low, high = core(torch.tensor([0.1, 0.9]))
    assert (low - high).norm() > 1e-4


def test_a_forward_without_noise_level_is_a_clear_error(batch):
    nara = nara_backbone()
    with pytest.raises(NoiseLevelMissing, match="noise level"):
        nara.logits(batch.input_ids)


@pytest.mark.parametrize("embedding", ["fourier", "mlp", "raw"])
def test_every_embedding_gives_an_identity_core_at_start(embedding):
    core = NoiseCore(NaraConfig(rank=4, embedding=embedding))
    values = core(torch.tensor([0.0, 0.5, 1.0]))
    assert values.shape == (3, 4, 4) and torch.equal(values, torch.eye(4).expand(3, 4, 4))


def test_nara_c_needs_no_noise_level_and_is_the_same_at_every_level(batch):
    backbone = tiny_llada(seed=0)
    inject(backbone.model, NaraCConfig(rank=4, dropout=0.0), NaraLayer, backbone.default_targets)
    randomize_adapter(backbone.model)
    free = backbone.logits(batch.input_ids)
    torch.testing.assert_close(free, logits(backbone, batch.input_ids, 0.2))


def test_hypernetwork_runs_in_float32_under_autocast():
    core = NoiseCore(NaraConfig(rank=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert core(torch.tensor([0.5])).dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(batch):
    def loss_and_grads(checkpointing: bool):
        torch.manual_seed(0)  # the Fourier frequencies are drawn at injection
        nara = nara_backbone()
        randomize_adapter(nara.model, scale=0.2)
        nara.model.train()
        if checkpointing:
            enable_gradient_checkpointing(nara.model)
        generator = torch.Generator().manual_seed(3)
        loss = masked_diffusion_loss(nara, batch.input_ids, batch.response_mask, generator=generator).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in nara.model.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = loss_and_grads(False)
    checkpointed_loss, checkpointed_grads = loss_and_grads(True)
    torch.testing.assert_close(plain_loss, checkpointed_loss)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(plain_grads[name], checkpointed_grads[name], msg=name)


# -- the inference shortcuts (adapters/nara.py, "Speed") ------------------------------------------------------------
# Without autograd a batch at one λ runs (B · C) (A x) instead of B (C (A x)): equal up to float32 rounding.
FOLD_TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def test_inference_remembers_the_core_and_equals_the_autograd_path_until_a_parameter_changes(batch):
    nara = nara_backbone()
    randomize_adapter(nara.model, scale=0.2)

    def with_autograd(level):
        with noise_level(nara.model, level):
            return nara.logits(batch.input_ids).detach()

    for level in (0.3, 0.3, torch.tensor([0.3, 0.6, 0.3, 0.9])):  # a λ seen before, then a mixed batch
        with torch.inference_mode():
            remembered = logits(nara, batch.input_ids, level)
        torch.testing.assert_close(remembered, with_autograd(level), **FOLD_TOLERANCE)
    # cores remembered under inference mode also serve plain no_grad forwards
    torch.testing.assert_close(logits(nara, batch.input_ids, 0.3), with_autograd(0.3), **FOLD_TOLERANCE)
    with torch.no_grad():
        find_router(nara.model).shared["shared"].hypernetwork[0].weight.mul_(2.0)  # moves the version counter
    changed = with_autograd(0.3)
    assert not torch.allclose(changed[0], remembered[0])
    torch.testing.assert_close(logits(nara, batch.input_ids, 0.3), changed, **FOLD_TOLERANCE)


def test_the_core_runs_the_hypernetwork_once_per_distinct_noise_level_and_remembers_it_without_autograd():
    core = NoiseCore(NaraConfig(rank=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in core.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    rows = []
    core.hypernetwork.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    levels = torch.tensor([0.5, 0.25, 0.5, 0.25])
    with_grad = core(levels)
    assert rows == [2] and with_grad.shape == (4, 4, 4)  # two distinct λ, one batched F call
    assert core(torch.tensor([0.5, 0.5])).shape == (1, 4, 4)  # one λ for the batch: one core that broadcasts
    rows.clear()
    with torch.no_grad():
        remembered = core(levels)
        core(levels)
    assert rows == [1, 1]  # each new λ alone, once; the second call is served from memory
    torch.testing.assert_close(remembered, with_grad.detach())
    with torch.no_grad():
        core.hypernetwork[-1].bias.add_(1.0)  # a parameter change empties the memory
        assert not torch.allclose(core(levels), remembered)
    assert rows == [1, 1, 1, 1]


def test_gradients_at_one_noise_level_equal_those_of_a_mixed_batch(batch):
    def gradients(levels_and_rows):
        torch.manual_seed(0)  # the Fourier frequencies are drawn at injection
        nara = nara_backbone()
        randomize_adapter(nara.model, scale=0.2)
        for level, rows in levels_and_rows:
            with noise_level(nara.model, level):
                nara.logits(batch.input_ids[rows]).square().mean().backward()
        return {n: p.grad for n, p in nara.model.named_parameters() if p.requires_grad}

    mixed = gradients([(torch.tensor([0.2, 0.7]), [0, 1])])  # per-sample cores, one batched product per layer
    alone = gradients([(0.2, [0]), (0.7, [1])])  # one core each: the single-λ path
    for name in mixed:  # the mean over 2 rows is half the sum of the two 1-row means
        torch.testing.assert_close(mixed[name] * 2, alone[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["nara", "nara-c"])
def test_folding_the_core_into_b_at_inference_leaves_the_sampler_s_canvases_unchanged(method, monkeypatch):
    from dllm_peft.adapters.registry import build_adapter_config, get_method
    from dllm_peft.config import SamplerConfig
    from dllm_peft.diffusion.sampler import sample

    backbone = tiny_llada(seed=0)
    inject(backbone.model, build_adapter_config(method, rank=8, dropout=0.0), get_method(method).layer_class,
           backbone.default_targets)
    randomize_adapter(backbone.model, seed=2, scale=0.3)  # a trained-ish adapter: B, A and F all far from zero
    backbone.model.eval()
    prompts = [backbone.encode(text) for text in ("Uppercase: apple\nAnswer:", "Question: 3 + 4 = ?\nAnswer:")]
    runs = {}
    for fold in (True, False):
        monkeypatch.setattr(NaraLayer, "fold_at_inference", fold)
        for name, settings in {"exact": SamplerConfig(gen_length=32, steps=32, block_length=8, stop_at_eos=False),
                               "sampled-dual": SamplerConfig(gen_length=32, steps=32, block_length=8, temperature=0.8,
                                                             threshold=0.05, cache="dual", stop_at_eos=False)}.items():
            generators = [torch.Generator().manual_seed(index) for index in range(len(prompts))]
            runs[fold, name] = sample(backbone, prompts, settings, generators).canvas
        ids = torch.tensor([prompts[0] + [backbone.mask_id] * 8])
        runs[fold, "logits"] = logits(backbone, ids, 0.4)
    assert any(layer._folds for layer in adapter_layers(backbone.model).values())  # the folded path ran
    for name in ("exact", "sampled-dual"):
        assert torch.equal(runs[True, name], runs[False, name]), name
    torch.testing.assert_close(runs[True, "logits"], runs[False, "logits"], **FOLD_TOLERANCE)


def test_a_folded_b_is_recomputed_when_b_changes(batch):
    nara = nara_backbone()
    randomize_adapter(nara.model, scale=0.2)
    before = logits(nara, batch.input_ids, 0.3)
    with torch.no_grad():
        for layer in adapter_layers(nara.model).values():
            layer.lora_B.mul_(2.0)  # moves B's version counter
    with noise_level(nara.model, 0.3):
        expected = nara.logits(batch.input_ids).detach()  # the autograd path: never folded
    after = logits(nara, batch.input_ids, 0.3)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, **FOLD_TOLERANCE)
