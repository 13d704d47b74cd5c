"""PEFT export: stock `peft` loads the exported directory on the same base and gives the adapter's logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from dllm_peft.adapters.base import inject
from dllm_peft.adapters.dora import DoraLayer
from dllm_peft.adapters.export import (
    MODEL_CARD_FILE,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    export_adapter,
)
from dllm_peft.adapters.files import load_adapter, read_adapter, save_adapter
from dllm_peft.adapters.hira import HiraLayer
from dllm_peft.adapters.registry import METHODS, build_adapter_config
from dllm_peft.config import ExportConfig
from dllm_peft.models import load_backbone, tiny_llada
from dllm_peft.models.default import SHIPPED_DIR
from dllm_peft.outputs import MANIFEST

from .conftest import randomize_adapter
from .test_merge import logits, random_adapter, refused, run

peft = pytest.importorskip("peft", reason="peft is a test dependency (pip install -e '.[dev]')")

EXPORTABLE = sorted(
    name
    for name, method in METHODS.items()
    if method.mergeable and (getattr(method.layer_class, "low_rank_factors", None) is not None
                             or issubclass(method.layer_class, (DoraLayer, HiraLayer)))
)
PEFT_LAYERS = {"hira": "peft.tuners.hira.HiraLayer"}  # the rest load as PEFT LoRA layers (DoRA: use_dora)


@pytest.fixture
def input_ids():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", EXPORTABLE)
def test_stock_peft_loads_the_export_and_gives_the_same_logits(method, tmp_path, input_ids):
    trained = random_adapter(method)
    save_adapter(trained, tmp_path / "adapter")
    level = 0.7 if METHODS[method].noise_dependent else None
    export_adapter(ExportConfig(adapter=str(tmp_path / "adapter"), noise_level=level, output=str(tmp_path / "peft")))
    loaded = peft.PeftModel.from_pretrained(tiny_llada(seed=0).model, str(tmp_path / "peft")).eval()
    layer_class = peft.tuners.hira.HiraLayer if method == "hira" else peft.tuners.lora.LoraLayer
    assert len([m for m in loaded.modules() if isinstance(m, layer_class)]) == 8
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG_FILE).read_text())
    assert config["peft_type"] == ("HIRA" if method == "hira" else "LORA")
    assert config.get("use_dora", False) == method.endswith("dora")
    with torch.no_grad():
        peft_logits = loaded(input_ids=input_ids).logits
    torch.testing.assert_close(peft_logits, logits(trained, input_ids, level), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["dora", "hira"])
def test_a_dora_or_hira_export_reads_back_as_the_same_adapter(method, tmp_path, input_ids):
    """Export then import (`peft_import.py`, its inverse) gives the adapter's logits again."""
    trained = random_adapter(method)
    save_adapter(trained, tmp_path / "adapter")
    export_adapter(ExportConfig(adapter=str(tmp_path / "adapter"), output=str(tmp_path / "peft")))
    record, _ = read_adapter(tmp_path / "peft")
    assert record["method"] == method
    back = tiny_llada(seed=0)
    load_adapter(back, tmp_path / "peft")
    back.model.eval()
    torch.testing.assert_close(logits(back, input_ids), logits(trained, input_ids), atol=1e-5, rtol=0)


def test_nara_exports_as_the_lora_with_b_times_the_core(tmp_path):
    trained = random_adapter("nara")
    save_adapter(trained, tmp_path / "adapter")
    export_adapter(ExportConfig(adapter=str(tmp_path / "adapter"), noise_level=0.25, output=str(tmp_path / "peft")))
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 4
    assert config["target_modules"] == sorted(f"model.transformer.blocks.{i}.{kind}" for i in (0, 1)
                                              for kind in ("q_proj", "k_proj", "v_proj", "attn_out"))
    layer = trained.model.get_submodule("model.transformer.blocks.1.v_proj")
    core = trained.model.dllm_peft_router.shared["shared"](torch.tensor([0.25]))[0]  # (r, r)
    with safe_open(str(tmp_path / "peft" / PEFT_WEIGHTS_FILE), framework="pt") as reader:
        prefix = "base_model.model.model.transformer.blocks.1.v_proj"
        assert len(list(reader.keys())) == 16
        torch.testing.assert_close(reader.get_tensor(f"{prefix}.lora_A.weight"), layer.lora_A.detach())
        expected_b = (layer.config.scale * layer.lora_B @ core).detach()
        torch.testing.assert_close(reader.get_tensor(f"{prefix}.lora_B.weight"), expected_b)
        assert json.loads(reader.metadata()["dllm_peft_export"])["noise_level"] == 0.25


def test_export_command_and_its_refusals(tmp_path, capsys):
    save_adapter(random_adapter("nara"), tmp_path / "adapter")
    argv = ["export", "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "peft")]
    refused(argv, capsys, "changes with the noise level λ")
    refused([*argv, "--noise-level", "2"], capsys, "--noise-level must lie in [0, 1]")
    refused([*argv, "--noise-level", "0.5", "--format", "gguf"], capsys, "unknown --format 'gguf'; choose one of: peft")
    save_adapter(random_adapter("houlsby"), tmp_path / "houlsby")
    houlsby = ["export", "--adapter", str(tmp_path / "houlsby"), "--output", str(tmp_path / "houlsby-peft")]
    refused(houlsby, capsys, "houlsby adapters have no low-rank update to fold into the base weights or to export (bottleneck")
    save_adapter(random_adapter("dora"), tmp_path / "dora")
    code, out, _ = run(["export", "--adapter", str(tmp_path / "dora"), "--output", str(tmp_path / "dora-peft")], capsys)
    assert code in (0, None) and "exported the dora adapter as a PEFT DoRA (rank 4, 8 modules)" in out
    code, out, _ = run([*argv, "--noise-level", "0.5"], capsys)
    assert code in (0, None) and "at λ = 0.5 as a PEFT LoRA (rank 4, 8 modules)" in out
    assert {path.name for path in (tmp_path / "peft").iterdir()} == {PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, MODEL_CARD_FILE, MANIFEST}


def default_model_adapter(method: str):
    """dllm-tiny (the default model, which others can resolve) with a randomised `method` adapter, in eval mode."""
    backbone = load_backbone("dllm-tiny", device="cpu")
    torch.manual_seed(0)
    inject(backbone.model, build_adapter_config(method, rank=4), METHODS[method].layer_class, backbone.default_targets)
    randomize_adapter(backbone.model, seed=3)
    backbone.model.eval()
    return backbone


@pytest.mark.parametrize(("method", "level", "tolerance"),
                         [("lora", None, 0.0), ("nara", 0.5, 1e-4), ("nara-dora", 0.5, 1e-4), ("hira", None, 1e-4)])
def test_auto_peft_model_loads_the_export_alone(method, level, tolerance, tmp_path, input_ids):
    trained = default_model_adapter(method)
    save_adapter(trained, tmp_path / "adapter")
    export_adapter(ExportConfig(adapter=str(tmp_path / "adapter"), noise_level=level, output=str(tmp_path / "peft")))
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(SHIPPED_DIR) and config["peft_version"] == peft.__version__
    assert config["auto_mapping"] == {"base_model_class": "AutoModel", "parent_library": "transformers"}
    assert config["task_type"] is None and len(config["target_modules"]) == 16
    assert config["peft_type"] == ("HIRA" if method == "hira" else "LORA")
    card = (tmp_path / "peft" / MODEL_CARD_FILE).read_text()
    assert f"# {method} adapter" in card and "AutoPeftModel.from_pretrained" in card and "dllm_peft.models" in card
    assert ("λ = 0.5" in card) == (level is not None)
    loaded = peft.AutoPeftModel.from_pretrained(str(tmp_path / "peft"), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = loaded(input_ids=input_ids).logits
    ours = logits(trained, input_ids, level)
    assert (ours - logits(load_backbone("dllm-tiny", device="cpu"), input_ids)).abs().max() > 1e-2
    torch.testing.assert_close(theirs, ours, atol=tolerance, rtol=tolerance)
