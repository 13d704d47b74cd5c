"""Dream's own sampler (`diffusion/dream_sampler.py`) commits, step by step, the tokens of Dream's
`diffusion_generate` (re-implemented in `dream_reference.py` with the global RNG, as the release runs it)."""

from __future__ import annotations

import pytest
import torch

from dllm_peft.config import SamplerConfig
from dllm_peft.diffusion.dream_sampler import dream_generate
from dllm_peft.diffusion.sampler import sample
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import load_backbone

from .dream_reference import reference_dream_generate
from .tiny_checkpoints import write_dream

SETTINGS = [
    dict(alg="origin", temperature=0.0),
    dict(alg="origin", temperature=0.8, top_p=0.9),
    dict(alg="maskgit_plus", temperature=0.0),
    dict(alg="maskgit_plus", temperature=1.0, top_k=20),
    dict(alg="topk_margin", temperature=0.5, top_p=0.95),
    dict(alg="entropy", temperature=0.0),
    dict(alg="entropy", temperature=0.7, alg_temp=0.5),
]


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dream") / "dream"
    write_dream(directory)
    return load_backbone(str(directory), device="cpu", dtype="float32")


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_step_commits_what_dreams_diffusion_generate_commits(dream, settings):
    prompt = dream.encode("the quick brown fox")
    config = SamplerConfig(gen_length=12, steps=6, block_length=12, schedule="dream", **settings)
    ours: list[torch.Tensor] = []
    dream_generate(dream, prompt, config, torch.Generator().manual_seed(7), lambda canvas, i: ours.append(canvas.clone()))
    torch.manual_seed(7)
    expected = reference_dream_generate(
        dream.model, torch.tensor([prompt]), dream.mask_id, 12, 6, alg=settings["alg"],
        alg_temp=settings.get("alg_temp"), temperature=settings["temperature"], top_p=settings.get("top_p"),
        top_k=settings.get("top_k"),
    )
    assert len(ours) == len(expected) == 6
    for step, (mine, theirs) in enumerate(zip(ours, expected)):
        assert torch.equal(mine, theirs), f"step {step}"
    assert (ours[-1] != dream.mask_id).all()


def test_dream_checkpoints_use_dreams_schedule_by_default(dream):
    prompt = dream.encode("a lazy dog")
    config = SamplerConfig(gen_length=8, steps=4, block_length=8)
    result = sample(dream, [prompt], config, [torch.Generator().manual_seed(0)])
    direct = dream_generate(dream, prompt, SamplerConfig(gen_length=8, steps=4, block_length=8, schedule="dream"),
                            torch.Generator().manual_seed(0))
    assert torch.equal(result.canvas[0], direct) and result.steps == [4]
    llada = sample(dream, [prompt], SamplerConfig(gen_length=8, steps=4, block_length=8, schedule="llada"))
    assert llada.steps == [4]


def test_llada_options_are_refused_with_dreams_schedule(dream):
    with pytest.raises(DllmPeftError, match="--schedule llada"):
        sample(dream, [dream.encode("a")], SamplerConfig(gen_length=8, steps=4, block_length=8, threshold=0.9))


def test_bad_alg_is_one_sentence():
    with pytest.raises(DllmPeftError, match="unknown --alg"):
        SamplerConfig(alg="greedy")
