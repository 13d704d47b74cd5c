"""The noise level end to end (issue 16): the λ values training routes cover those the sampler routes (default:
a continuous λ; `--padding canvas --noise-draw grid`: an exact grid), and validation is labelled with the λ it
routed and does not depend on --batch-size."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from accelerate import Accelerator

from dllm_peft.config import SamplerConfig, TrainConfig
from dllm_peft.data.records import collate
from dllm_peft.diffusion import kv_cache
from dllm_peft.diffusion.loss import masked_diffusion_loss
from dllm_peft.diffusion.sampler import sample
from dllm_peft.diffusion.schedule import (
    draw_mask_counts,
    noise_level_grid,
    sampler_noise_levels,
)
from dllm_peft.models import load_backbone
from dllm_peft.training.metrics import read_metrics
from dllm_peft.training.train import train
from dllm_peft.training.validation import batch_padding, load_training_data, validate

TINY = dict(rank=4, batch_size=4, val_size=8, eval_every=0, save_every=0, lr=1e-2)


def sampled_noise_levels(backbone, config: SamplerConfig, monkeypatch) -> set[float]:
    """Every λ the real sampler hands the denoiser on one prompt."""
    seen: set[float] = set()
    original = kv_cache.BlockDenoiser.__call__

    def recording(self, canvas, rows, start, end, level):
        seen.update(round(value, 9) for value in level.tolist())
        return original(self, canvas, rows, start, end, level)

    monkeypatch.setattr(kv_cache.BlockDenoiser, "__call__", recording)
    sample(backbone, [backbone.encode("Last digit: 4096\nAnswer:")], config)
    return seen


# -- Must show 1 ----------------------------------------------------------------------------------------------------
def test_canvas_grid_training_routes_every_lambda_the_default_sampler_routes(monkeypatch):
    """`train --padding canvas --noise-draw grid` (dllm-tiny, builtin:lastdigit) and default `sample` / task `eval`."""
    config = TrainConfig(padding="canvas", noise_draw="grid")
    backbone = load_backbone(config.model)
    data = load_training_data(config, backbone)
    padding = batch_padding(config)
    routed: set[float] = set()
    for start in range(0, len(data.train), config.batch_size):  # every training batch of an epoch
        batch = collate(data.train[start : start + config.batch_size], backbone.eos_id, **padding)
        for length in set(batch.response_mask.sum(dim=1).tolist()):
            routed |= noise_level_grid(length)  # k is uniform on {1..L}: every k / L is drawn
    for sampler in (SamplerConfig(gen_length=32, block_length=32, steps=32), SamplerConfig()):  # eval's 32; sample
        sampled = sampled_noise_levels(backbone, sampler, monkeypatch)
        expected = sampler_noise_levels(sampler.gen_length, sampler.block_length, sampler.steps)
        assert sampled == {round(level, 9) for level in expected}
        assert sampled <= routed, sorted(sampled - routed)
    # and the draws hit them: 600 steps × 8 examples over L = 64 route each λ about 75 times (the loss routes
    # exactly draw_mask_counts / L, `test_loss.py`); one real loss call shows the λ it routes lies on the grid
    batch = collate(data.train[:8], backbone.eos_id, **padding)
    lengths = batch.response_mask.sum(dim=1).repeat(600)  # (4800,)
    drawn = draw_mask_counts(lengths, torch.Generator().manual_seed(0)) / lengths
    assert sampled <= {round(level, 9) for level in drawn.tolist()}
    out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, batch.attention_mask)
    assert {round(level, 9) for level in out.noise_level.tolist()} <= routed


def test_default_training_routes_a_dense_lambda_around_every_lambda_the_default_sampler_routes(monkeypatch):
    """Default `train` (--noise-draw continuous, --padding 32): the λ routed are the draws t themselves, so over a
    default run (600 steps × 8 examples) every λ the sampler routes has a routed λ within a tenth of its 64-grid
    spacing, for default `sample` (gen length 64) and for `eval` on the built-in tasks (32)."""
    config = TrainConfig()
    assert (config.noise_draw, config.padding) == ("continuous", "32")
    backbone = load_backbone(config.model)
    data = load_training_data(config, backbone)
    batch = collate(data.train[:8], backbone.eos_id, **batch_padding(config))
    routed = torch.cat([
        masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, batch.attention_mask,
                              generator=torch.Generator().manual_seed(step), noise_draw=config.noise_draw).noise_level
        for step in range(config.max_steps)
    ])  # (4800,) what `train` routes, one draw per example and step
    assert routed.min() > 0 and routed.max() <= 1
    assert len(set(routed.tolist())) > 4700  # not a grid: (almost) every draw is its own λ
    assert batch.response_mask.sum(dim=1).tolist() == [32] * 8  # each answer EOS-padded to eval's canvas
    for sampler in (SamplerConfig(gen_length=32, block_length=32, steps=32), SamplerConfig()):
        sampled = torch.tensor(sorted(sampled_noise_levels(backbone, sampler, monkeypatch)))
        nearest = (sampled[:, None] - routed[None, :]).abs().min(dim=1).values  # (levels,)
        assert nearest.max() < 0.1 / 64, nearest.max()


def test_longest_padding_with_the_grid_draw_leaves_most_of_the_sampler_grid_untrained(monkeypatch):
    config = TrainConfig(padding="longest", noise_draw="grid")
    backbone = load_backbone(config.model)
    data = load_training_data(config, backbone)
    routed: set[float] = set()
    for start in range(0, len(data.train), config.batch_size):
        batch = collate(data.train[start : start + config.batch_size], backbone.eos_id, **batch_padding(config))
        for length in set(batch.response_mask.sum(dim=1).tolist()):
            routed |= noise_level_grid(length)
    sampled = sampled_noise_levels(backbone, SamplerConfig(gen_length=8, block_length=8, steps=8), monkeypatch)
    assert len(sampled - routed) >= 4  # the figure: 4 of the 8 λ values at --gen-length 8


def test_canvas_padding_is_per_example_and_never_passes_max_length(backbone):
    from dllm_peft.data.records import Example

    short, long, tight = Example((1, 2), (3, 256)), Example((1,), tuple(range(9)) + (256,)), Example((1,) * 14, (256,))
    batch = collate([short, long, tight], 256, canvas=8, max_length=20)
    assert batch.response_mask.sum(dim=1).tolist() == [8, 16, 6]  # 2 → 8, 10 → 16, 1 → 8 cut at max_length: 6
    assert batch.attention_mask.sum(dim=1).tolist() == [10, 17, 20]
    assert (batch.input_ids[0, 4:10] == 256).all()  # EOS padding inside the response region
    assert not batch.response_mask[0, 10:].any() and not batch.attention_mask[0, 10:].any()  # outside the sequence


def test_train_reports_the_lambda_it_routed_and_warns_when_the_sampler_grid_is_not_covered(tmp_path):
    covered = train(TrainConfig(**TINY, max_steps=2, padding="canvas", noise_draw="grid", output=str(tmp_path / "canvas")))
    histogram = read_metrics(tmp_path / "canvas", "noise_levels")[-1]
    assert sum(histogram["histogram"].values()) == 2 * 4
    assert all(float(level) * 64 == pytest.approx(round(float(level) * 64)) for level in histogram["histogram"])
    assert histogram["missing_sampler_noise_levels"] == [] and not read_metrics(tmp_path / "canvas", "warning")
    assert covered.losses

    reports = []
    grid = TrainConfig(**TINY, max_steps=2, padding="longest", noise_draw="grid", output=str(tmp_path / "longest"))
    train(grid, None, reports.append)
    warning = read_metrics(tmp_path / "longest", "warning")[0]["noise_level_coverage"]
    assert len(warning["missing_sampler_noise_levels"]) > 32
    assert any(getattr(report, "missing", None) for report in reports)

    # continuous: the same short regions, but λ is the draw t; nothing is missing, no warning, binned to 1e-3
    reports = []
    dense = dataclasses.replace(grid, noise_draw="continuous", output=str(tmp_path / "continuous"))
    train(dense, None, reports.append)
    histogram = read_metrics(tmp_path / "continuous", "noise_levels")[-1]
    assert histogram["noise_draw"] == "continuous" and histogram["missing_sampler_noise_levels"] == []
    assert sum(histogram["histogram"].values()) == 2 * 4 and not read_metrics(tmp_path / "continuous", "warning")
    assert len(histogram["histogram"]) > 3  # more λ values than a 3-token grid has
    assert all(float(level) == round(float(level), 3) for level in histogram["histogram"])
    assert [report.noise_draw for report in reports if hasattr(report, "noise_draw")] == ["continuous"]


# -- validation ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding, noise_draw", [("canvas", "grid"), ("longest", "grid"), ("longest", "continuous")])
def test_validation_at_step_0_does_not_depend_on_the_batch_size(padding, noise_draw):
    backbone = load_backbone("dllm-tiny")
    config = TrainConfig(val_size=16, padding=padding, noise_draw=noise_draw)
    data = load_training_data(config, backbone)
    reports = [
        validate(backbone, data.validation, dataclasses.replace(config, batch_size=size), Accelerator(cpu=True), 0)
        for size in (4, 8, 16)
    ]
    for report in reports[1:]:
        assert report.loss == pytest.approx(reports[0].loss, rel=1e-5)
        assert report.by_noise_level == pytest.approx(reports[0].by_noise_level, rel=1e-5)
    # each row is labelled with the λ it routed: round(λ·64) / 64 under canvas padding
    if padding == "canvas":
        assert reports[0].routed == pytest.approx({level: round(level * 64) / 64 for level in config.noise_levels})
    if noise_draw == "continuous":  # the nominal λ is routed as it is
        assert reports[0].routed == pytest.approx({level: level for level in config.noise_levels})


# -- --hypernetwork-lr -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["nara", "nara-c"])
def test_hypernetwork_lr_sets_the_rate_of_the_noise_conditioned_modules_only(tmp_path, method):
    from dllm_peft.adapters.files import read_adapter

    def trained(name, **settings):
        train(TrainConfig(**{**TINY, "val_size": 0, "max_steps": 2, "method": method, **settings},
                          output=str(tmp_path / name)))
        return read_adapter(tmp_path / name)[1]

    same, frozen = trained("same"), trained("frozen", hypernetwork_lr=1e-12)
    start = trained("start", lr=1e-12)  # both groups barely move: the initial values
    conditioned = [name for name in same if name.startswith("dllm_peft_router") and "frequencies" not in name]
    lora = [name for name in same if "lora_A" in name]
    assert conditioned and lora
    for name in conditioned:  # the hypernetwork / core stays where it started at --hypernetwork-lr 1e-12
        torch.testing.assert_close(frozen[name], start[name], atol=1e-9, rtol=0)
    assert any(not torch.allclose(same[name], start[name]) for name in conditioned)
    for name in lora:  # while the low-rank factors train at --lr
        assert not torch.allclose(frozen[name], start[name])
