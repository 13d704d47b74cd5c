"""The NaRA authors' checkpoint layout (`adapter_config.json` with peft_type NARA + `adapter_model.bin`) read as ours:
our logits equal a direct computation of their formula, ΔW = scale_ab · B · Cᵀ · A with
C = I + c_scale · view(F([sin(λW), cos(λW)]), r, r), at several λ."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dllm_peft.adapters.files import load_adapter, read_adapter
from dllm_peft.diffusion.conditioning import noise_level
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import tiny_llada

RANK, HIDDEN, EMBED = 4, (16, 24), 8
TARGETS = ("q_proj", "v_proj")


def their_checkpoint(directory, backbone, mode: str = "nl", groups: dict | None = None) -> dict:
    """A checkpoint as their `save_pretrained` writes it (adapter name removed), random but fixed values."""
    generator = torch.Generator().manual_seed(3)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=generator) * scale

    state = {}
    modules = [name for name, module in backbone.model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in TARGETS]
    for name in modules:
        linear = backbone.model.get_submodule(name)
        state[f"base_model.model.{name}.lora_A"] = rand(RANK, linear.in_features)
        state[f"base_model.model.{name}.lora_B"] = rand(linear.out_features, RANK)
    if mode == "constant":
        state["base_model.constant_c"] = rand(RANK, RANK)
    else:
        for group in (list(groups) if groups else [None]):
            prefix = "base_model.global_mapper." + (f"{group}." if group else "") + "model."
            widths = (EMBED, *HIDDEN, RANK * RANK)
            for index, layer in enumerate((0, 2, 4)):
                state[f"{prefix}{layer}.weight"] = rand(widths[index + 1], widths[index])
                state[f"{prefix}{layer}.bias"] = rand(widths[index + 1])
        state["base_model.embedding_layers.NL_emb.W"] = torch.randn(1, EMBED // 2, generator=generator) * 16.0
    config = {"peft_type": "NARA", "r_ab": RANK, "lora_alpha": 32, "scale_ab": 0.7, "c_scale": 0.4,
              "lora_dropout": 0.0, "target_modules": list(TARGETS), "input_mode": mode, "embedding_type": "fourier",
              "embedding_dim": EMBED, "fnn_hidden_size_1": HIDDEN[0], "fnn_hidden_size_2": HIDDEN[1],
              "mapper_groups": groups, "bias": "none", "fan_in_fan_out": False}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    torch.save(state, directory / "adapter_model.bin")
    return {"state": state, "config": config, "modules": modules}


def their_core(checkpoint: dict, module: str, level: float) -> torch.Tensor:
    """Their C (r, r) for `module` at λ, computed from their tensors as their code does."""
    state, config = checkpoint["state"], checkpoint["config"]
    if config["input_mode"] == "constant":
        return torch.eye(RANK) + config["c_scale"] * state["base_model.constant_c"]
    group = None
    for name, patterns in (config["mapper_groups"] or {}).items():
        if any(module.endswith(pattern) for pattern in patterns):
            group = name
    prefix = "base_model.global_mapper." + (f"{group}." if group else "") + "model."
    angles = torch.tensor([[level]]) @ state["base_model.embedding_layers.NL_emb.W"]  # (1, d/2)
    hidden = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (1, d)
    for layer in (0, 2, 4):
        hidden = F.linear(hidden, state[f"{prefix}{layer}.weight"], state[f"{prefix}{layer}.bias"])
        hidden = F.silu(hidden) if layer != 4 else hidden
    return torch.eye(RANK) + config["c_scale"] * hidden.view(RANK, RANK)


def their_logits(checkpoint: dict, level: float, input_ids: torch.Tensor) -> torch.Tensor:
    """The base model with each module's ΔW = scale_ab · B · Cᵀ · A (their h · C on the row vector h = A x) added."""
    reference = tiny_llada(seed=0)
    with torch.no_grad():
        for module in checkpoint["modules"]:
            a = checkpoint["state"][f"base_model.model.{module}.lora_A"]
            b = checkpoint["state"][f"base_model.model.{module}.lora_B"]
            core = their_core(checkpoint, module, level)
            reference.model.get_submodule(module).weight += checkpoint["config"]["scale_ab"] * b @ core.T @ a
        return reference.logits(input_ids)


@pytest.mark.parametrize("mode, groups", [("nl", None), ("nl", {"qk": ["q_proj"], "vo": ["v_proj"]}), ("constant", None)])
def test_their_checkpoint_gives_the_logits_of_their_formula(tmp_path, mode, groups):
    backbone = tiny_llada(seed=0)
    checkpoint = their_checkpoint(tmp_path, backbone, mode, groups)
    record = load_adapter(backbone, tmp_path)
    assert record["method"] == ("nara-c" if mode == "constant" else "nara")
    assert record["eta"] == 0.4 and record["scale"] == 0.7
    backbone.model.eval()
    input_ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    cores = set()
    for level in (0.05, 0.3, 0.5, 0.8, 1.0):
        with torch.no_grad(), noise_level(backbone.model, level):
            ours = backbone.logits(input_ids)
        torch.testing.assert_close(ours, their_logits(checkpoint, level, input_ids), rtol=1e-4, atol=1e-4)
        cores.add(round(their_core(checkpoint, checkpoint["modules"][0], level).sum().item(), 4))
    assert len(cores) == (1 if mode == "constant" else 5)  # the core really moves with λ: the test is not vacuous
    # and the core is not symmetric, so a missing transpose would fail above
    core = their_core(checkpoint, checkpoint["modules"][0], 0.3)
    assert not torch.allclose(core, core.T, atol=1e-3)


def test_a_pickle_that_is_not_a_dict_of_tensors_is_refused(tmp_path):
    backbone = tiny_llada(seed=0)
    their_checkpoint(tmp_path, backbone)
    torch.save({"lora": [1, 2, 3]}, tmp_path / "adapter_model.bin")  # plain containers load under weights_only
    with pytest.raises(DllmPeftError, match="dict of tensors"):
        read_adapter(tmp_path)


def test_noise_density_checkpoints_are_refused_by_name(tmp_path):
    backbone = tiny_llada(seed=0)
    their_checkpoint(tmp_path, backbone)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "input_mode": "both"}))
    with pytest.raises(DllmPeftError, match="input_mode='both'"):
        read_adapter(tmp_path)
