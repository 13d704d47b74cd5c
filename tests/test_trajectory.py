"""LoRA-Diffusion's trajectory adapter and the router that composes trained task adapters at sampling time."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dllm_peft.adapters.base import find_model_adapter, inject, trainable_parameters
from dllm_peft.adapters.files import save_adapter
from dllm_peft.adapters.router import recorded_router_weights
from dllm_peft.adapters.trajectory import (
    TrajectoryAdapter,
    TrajectoryConfig,
    trajectory_regularization,
)
from dllm_peft.config import SamplerConfig
from dllm_peft.data.records import Example, prompt_response_pairs, tokenize_pairs
from dllm_peft.data.tasks import task_records
from dllm_peft.diffusion.conditioning import noise_level
from dllm_peft.diffusion.loss import masked_diffusion_loss
from dllm_peft.diffusion.sampler import sample
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import tiny_llada
from dllm_peft.training.router import compose_from_files, router_batch, train_router

from .conftest import make_batch, randomize_adapter


def trajectory_backbone(**settings):
    torch.manual_seed(0)
    backbone = tiny_llada(seed=0)
    inject(backbone.model, TrajectoryConfig(**settings), TrajectoryAdapter)
    return backbone


def test_each_third_of_the_trajectory_uses_its_rank_and_scale():
    residual = find_model_adapter(trajectory_backbone().model).residual
    levels = torch.tensor([1.0, 0.67, 2 / 3, 0.34, 1 / 3, 0.0])
    assert residual.phase(levels).tolist() == [0, 0, 1, 1, 2, 2]  # early λ > 2/3, middle, late λ ≤ 1/3
    assert [module[0].down.shape[0] for module in residual.perturbations] == [64, 64]
    assert [factors.up.shape[1] for factors in residual.perturbations[0]] == [64, 32, 8]


def test_the_residual_on_the_head_input_is_sigma_times_the_sum_of_the_modules(batch):
    """logits = head(h + σ(λ) Σ_i A_i ReLU(B_i [h; Emb(λ)])), h = the frozen base's hidden state at the head."""
    backbone = trajectory_backbone()
    randomize_adapter(backbone.model, scale=0.2)
    residual = find_model_adapter(backbone.model).residual
    base = tiny_llada(seed=0)
    with torch.no_grad():
        hidden = base.model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states[-1]  # (B, T, d)
        for level, phase, sigma in ((0.9, 0, 1.0), (0.5, 1, 0.5), (0.2, 2, 0.25)):
            levels = torch.full((hidden.shape[0],), level)
            features = residual.embedding(levels)[:, None].expand(-1, hidden.shape[1], -1)  # (B, T, e)
            joined = torch.cat([hidden, features], dim=-1)  # [h; Emb(λ)]
            update = sum(F.relu(joined @ m[phase].down.T) @ m[phase].up.T for m in residual.perturbations)
            head = backbone.model.get_output_embeddings().weight  # the module itself carries the adapter's hook
            expected = F.linear(hidden + sigma * update, head)
            with noise_level(backbone.model, level):
                torch.testing.assert_close(backbone.logits(batch.input_ids), expected, atol=1e-5, rtol=1e-5)


def test_the_regulariser_is_the_papers_nuclear_and_orthogonality_terms():
    backbone = trajectory_backbone(ranks=(6, 3), scales=(1.0, 0.5))
    randomize_adapter(backbone.model, scale=0.3)
    residual = find_model_adapter(backbone.model).residual
    factors = [f for module in residual.perturbations for f in module]
    nuclear = sum(torch.linalg.svd(matrix).S.sum() for f in factors for matrix in (f.down, f.up))
    first, second = residual.perturbations
    orthogonality = sum(2 * (first[p].up.T @ second[p].up).pow(2).sum() for p in range(2))  # (i, j) and (j, i)
    expected = 0.01 * nuclear + 0.001 * orthogonality
    torch.testing.assert_close(trajectory_regularization(backbone.model), expected)


def test_the_regulariser_has_a_finite_gradient_at_the_zero_start():
    backbone = trajectory_backbone()
    trajectory_regularization(backbone.model).backward()
    assert all(torch.isfinite(p.grad).all() for p in trainable_parameters(backbone.model) if p.grad is not None)


def train_task_adapter(task: str, directory, steps: int = 30):
    backbone = trajectory_backbone()
    batch = make_batch(backbone, 8, task)
    optimizer = torch.optim.AdamW(trainable_parameters(backbone.model), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, generator=generator).loss
        (loss + trajectory_regularization(backbone.model)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_adapter(backbone, directory / task)


@pytest.fixture(scope="module")
def task_adapters(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tasks")
    return [train_task_adapter(task, directory) for task in ("uppercase", "reverse")]


def router_batches(backbone, tasks, count: int = 32, per_task: int = 4, response_length: int = 16):
    pairs = [prompt_response_pairs(task_records(task, "train", count)) for task in tasks]
    pools = [tokenize_pairs(task_pairs, backbone, max_length=128)[0] for task_pairs in pairs]
    return [
        router_batch([pool[start : start + per_task] for pool in pools], response_length, backbone.eos_id)
        for start in range(0, count, per_task)
    ]


def test_router_batches_are_shaped_like_the_samplers_canvas():
    """Left padding, the prompt, then exactly `response_length` positions (the answer cut or EOS-padded)."""
    eos = 256
    short, long_answer = Example((1, 2), (7, 8, eos)), Example((3, 4, 5), (9, 9, 9, 9, 9, 9, eos))
    batch, labels = router_batch([[short], [long_answer]], response_length=4, eos_id=eos)
    assert batch.input_ids.tolist() == [[eos, 1, 2, 7, 8, eos, eos], [3, 4, 5, 9, 9, 9, 9]]
    assert batch.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1, 1], [1] * 7]
    assert batch.response_mask.tolist() == [[False] * 3 + [True] * 4] * 2 and labels.tolist() == [0, 1]


def test_two_task_adapters_compose_through_the_router_at_sampling_time(task_adapters):
    """Must show 3: after router training, each prompt is sampled mostly through its own task's adapter."""
    backbone = tiny_llada(seed=0)
    adapter = compose_from_files(backbone, task_adapters)
    assert adapter.config.task_names == ("uppercase", "reverse")
    batches = router_batches(backbone, adapter.config.task_names)
    generator = torch.Generator().manual_seed(1)
    losses = train_router(backbone, itertools.cycle(batches), steps=40, lr=1e-2, generator=generator)
    assert losses[-1] < losses[0]
    prompts = [backbone.encode("Uppercase: apple river\nAnswer:"), backbone.encode("Reverse: tiger\nAnswer:")]
    with torch.no_grad(), recorded_router_weights(backbone.model) as weights:
        sample(backbone, prompts, SamplerConfig(gen_length=16, steps=8, block_length=16))
    assert len(weights) == 8 and weights[0].shape == (2, 2)  # one (prompts, tasks) tensor per denoising step
    mean = torch.stack(weights).mean(dim=0)
    assert mean[0, 0] > 0.8 and mean[1, 1] > 0.8, mean


def test_a_router_sure_of_one_task_equals_that_task_adapter_alone(task_adapters, batch):
    from dllm_peft.adapters.files import load_adapter

    composed = tiny_llada(seed=0)
    adapter = compose_from_files(composed, task_adapters)
    with torch.no_grad():
        adapter.task_router.mlp[-1].bias.copy_(torch.tensor([0.0, 1e4]))  # softmax → exactly (0, 1)
    alone = tiny_llada(seed=0)
    load_adapter(alone, task_adapters[1])
    for level in (0.2, 0.9):
        with torch.no_grad(), noise_level(composed.model, level), noise_level(alone.model, level):
            torch.testing.assert_close(composed.logits(batch.input_ids), alone.logits(batch.input_ids))


def test_only_trajectory_adapters_with_equal_settings_compose(task_adapters, tmp_path):
    other = trajectory_backbone(modules=1)
    save_adapter(other, tmp_path / "one-module")
    with pytest.raises(DllmPeftError, match=r"differs from .* in \['modules'\]"):
        compose_from_files(tiny_llada(seed=0), [task_adapters[0], tmp_path / "one-module"])
    with pytest.raises(DllmPeftError, match="at least two"):
        compose_from_files(tiny_llada(seed=0), task_adapters[:1])


def test_log_likelihood_through_a_composed_router_equals_the_reference(task_adapters):
    """The router pools the head's input over every position, so the head must not be cut to the scored ones."""
    from dllm_peft.diffusion.likelihood import log_likelihoods, reference_log_likelihood

    backbone = tiny_llada(seed=0)
    adapter = compose_from_files(backbone, task_adapters)
    with torch.no_grad():  # a router whose weights depend on what it pools (a fresh one is uniform)
        adapter.task_router.mlp[-1].weight.normal_(0.0, 5.0, generator=torch.Generator().manual_seed(0))
    requests = [(backbone.encode("Uppercase: apple river\nAnswer:"), backbone.encode(" APPLE RIVER")),
                (backbone.encode("Reverse: tiger\nAnswer:"), backbone.encode(" regit"))]
    batched = log_likelihoods(backbone, requests, mc_num=8, batch_size=16, seed=0)
    reference = [reference_log_likelihood(backbone, prompt, answer, mc_num=8, seed=0) for prompt, answer in requests]
    assert batched == pytest.approx(reference, abs=1e-4)
