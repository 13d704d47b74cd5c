"""MDLM and SEDD (`models/dit.py`, `mdlm.py`, `sedd.py`): the authors' folders load offline and compute what the
authors' forward computes; σ reaches the adaLN layers through `Backbone.logits(noise_level=λ)`."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from dllm_peft.errors import DllmPeftError
from dllm_peft.models import load_backbone
from dllm_peft.models.dit import sigma_from_noise_level

from .dit_reference import reference_dit, reference_sedd_log_score
from .tiny_checkpoints import DIT_SIZE, write_mdlm, write_sedd

IDS = torch.tensor([[65, 66, 257, 257, 67, 257], [70, 257, 71, 72, 257, 257]])  # 257: the mask (last row)


def test_sigma_is_minus_log_one_minus_lambda_clamped():
    sigma = sigma_from_noise_level(torch.tensor([0.0, 0.5, 1.0]))
    assert sigma[0] == 0 and math.isclose(sigma[1].item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(sigma[2].item(), -math.log(1e-3), rel_tol=1e-4)  # finite at λ = 1


def test_mdlm_folder_loads_and_matches_the_authors_forward(tmp_path):
    write_mdlm(tmp_path / "mdlm")
    backbone = load_backbone(str(tmp_path / "mdlm"), device="cpu", dtype="float32")
    assert (backbone.mask_id, backbone.eos_id, backbone.default_targets) == (257, 256, ("attn_qkv", "attn_out"))
    level = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        ours = backbone.logits(IDS, noise_level=level)
    state = load_file(str(tmp_path / "mdlm" / "model.safetensors"))
    expected = reference_dit(state, IDS, -torch.log1p(-level), DIT_SIZE["n_heads"], prefix="backbone.")
    assert torch.isinf(ours[..., 257]).all() and (ours[..., 257] < 0).all()  # SUBS: the mask is never the answer
    torch.testing.assert_close(ours[..., :257], expected[..., :257], atol=2e-5, rtol=1e-5)


def test_sedd_folder_loads_from_its_pickle_and_matches_the_authors_forward(tmp_path):
    write_sedd(tmp_path / "sedd")
    backbone = load_backbone(str(tmp_path / "sedd"), device="cpu", dtype="float32")
    assert backbone.mask_id == 257 and backbone.model.scale_by_sigma
    level = torch.tensor([0.3, 0.7])
    sigma = -torch.log1p(-level)
    state = torch.load(tmp_path / "sedd" / "pytorch_model.bin", weights_only=True)
    with torch.no_grad():
        scores = backbone.model.log_score(IDS, sigma)
        ours = backbone.logits(IDS, noise_level=level)
    torch.testing.assert_close(scores, reference_sedd_log_score(state, IDS, sigma, DIT_SIZE["n_heads"]),
                               atol=2e-5, rtol=1e-5)
    # the denoiser at masked positions: softmax of the log-scores over the clean tokens (derivation in sedd.py)
    masked = IDS == 257
    torch.testing.assert_close(ours[masked].softmax(-1)[:, :257], scores[masked][:, :257].softmax(-1))


def test_sedd_reads_safetensors_too(tmp_path):
    write_sedd(tmp_path / "sedd", safetensors=True)
    assert load_backbone(str(tmp_path / "sedd"), device="cpu").mask_id == 257


def test_sigma_reaches_the_adaln_layers_only_when_time_conditioned(tmp_path):
    """Logits change with λ for MDLM with time conditioning and SEDD, and not for `time_conditioning: false`."""
    write_mdlm(tmp_path / "on")
    write_mdlm(tmp_path / "off", time_conditioning=False)
    write_sedd(tmp_path / "sedd")
    for name, conditioned in (("on", True), ("off", False), ("sedd", True)):
        backbone = load_backbone(str(tmp_path / name), device="cpu")
        with torch.no_grad():
            low, high = (backbone.logits(IDS, noise_level=level)[IDS == 257] for level in (0.1, 0.9))
            low = low.softmax(-1)  # SEDD's σ also shifts every score by a constant: compare distributions
            high = high.softmax(-1)
        assert torch.equal(low, high) != conditioned, name


def test_without_a_noise_level_lambda_is_read_off_the_input(tmp_path):
    write_mdlm(tmp_path / "mdlm")
    backbone = load_backbone(str(tmp_path / "mdlm"), device="cpu")
    with torch.no_grad():
        implicit = backbone.logits(IDS)
        explicit = backbone.logits(IDS, noise_level=torch.tensor([3 / 6, 3 / 6]))
    torch.testing.assert_close(implicit, explicit)


def test_left_padding_with_positions_leaves_a_row_as_it_is_alone(tmp_path):
    write_mdlm(tmp_path / "mdlm")
    backbone = load_backbone(str(tmp_path / "mdlm"), device="cpu")
    alone = torch.tensor([[65, 66, 257]])
    padded = torch.tensor([[256, 256, 65, 66, 257]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        one = backbone.logits(alone, noise_level=0.5)
        two = backbone.logits(padded, mask, noise_level=0.5, position_ids=positions)
    torch.testing.assert_close(one[0], two[0, 2:], atol=1e-5, rtol=1e-5)


def test_a_folder_without_tokenizer_says_to_put_gpt2s_there(tmp_path):
    write_mdlm(tmp_path / "mdlm", with_tokenizer=False)
    with pytest.raises(DllmPeftError, match="GPT-2's tokenizer"):
        load_backbone(str(tmp_path / "mdlm"), device="cpu")


def test_a_uniform_graph_sedd_is_refused(tmp_path):
    import json

    write_sedd(tmp_path / "sedd")
    config_file = tmp_path / "sedd" / "config.json"
    config = json.loads(config_file.read_text())
    config["graph"]["type"] = "uniform"
    config_file.write_text(json.dumps(config))
    with pytest.raises(DllmPeftError, match="absorbing graph"):
        load_backbone(str(tmp_path / "sedd"), device="cpu")


def test_a_cache_is_refused_with_a_reason(tmp_path):
    write_sedd(tmp_path / "sedd")
    backbone = load_backbone(str(tmp_path / "sedd"), device="cpu")
    with pytest.raises(DllmPeftError, match="--cache none"):
        backbone.logits(IDS, noise_level=0.5, use_cache=True)


@pytest.mark.parametrize("kind", ["mdlm", "sedd"])
def test_a_folder_trains_with_nara_and_trajectory_samples_and_scores(kind, tmp_path):
    """Must show 1: the authors' layout loads, trains 20 steps (NaRA, trajectory), samples and scores a likelihood."""
    from dllm_peft.adapters.files import load_adapter
    from dllm_peft.config import SamplerConfig, TrainConfig
    from dllm_peft.diffusion.likelihood import log_likelihoods
    from dllm_peft.diffusion.sampler import sample
    from dllm_peft.training.train import train

    writer = write_mdlm if kind == "mdlm" else write_sedd
    writer(tmp_path / kind)
    for method in ("nara", "trajectory"):
        output = tmp_path / f"{kind}-{method}"
        result = train(TrainConfig(model=str(tmp_path / kind), method=method, rank=4, batch_size=4, val_size=8,
                                   eval_every=0, save_every=0, lr=1e-2, max_steps=20, device="cpu",
                                   output=str(output)))
        assert len(result.losses) == 20 and all(math.isfinite(loss) for loss in result.losses)
        backbone = load_backbone(str(tmp_path / kind), device="cpu")
        load_adapter(backbone, output)
        backbone.model.eval()
        prompt = backbone.encode("7 3 1 ->")
        generated = sample(backbone, [prompt], SamplerConfig(gen_length=8, steps=8, block_length=8),
                           torch.Generator().manual_seed(0))
        assert len(generated.tokens[0]) <= 8 and (generated.canvas != backbone.mask_id).all()
        [score] = log_likelihoods(backbone, [(prompt, backbone.encode(" 1"))], mc_num=4)
        assert math.isfinite(score) and score < 0
