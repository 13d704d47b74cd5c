"""Stock PEFT adapters come in: built with `peft` on the default model, read by every `--adapter` command.

Each test builds its PEFT adapter inline (random, non-zero factors so that a wrong mapping shows) on `dllm-tiny`,
saves it with PEFT's own `save_pretrained`, and compares dllm-peft's result with PEFT's on the same input.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_peft.adapters.export import export_adapter
from dllm_peft.adapters.files import read_adapter
from dllm_peft.adapters.merge import merge_adapter
from dllm_peft.config import ExportConfig, MergeConfig, TrainConfig
from dllm_peft.errors import DllmPeftError
from dllm_peft.evaluation.lm import DllmPeftLM
from dllm_peft.models import load_backbone, tiny_llada
from dllm_peft.training.train import train

peft = pytest.importorskip("peft", reason="peft is a test dependency (pip install -e '.[dev]')")

DEFAULT = "dllm-tiny"
KINDS = {
    "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "ff_out"],
                                    init_lora_weights=False),
    "rslora": lambda: peft.LoraConfig(r=4, lora_alpha=3, use_rslora=True, target_modules=["k_proj"],
                                      init_lora_weights=False),
    "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "attn_out"],
                                    init_lora_weights=False),
    "hira": lambda: peft.HiraConfig(r=4, target_modules=["q_proj", "up_proj"], init_weights=False),
}
METHOD_OF = {"lora": "lora", "rslora": "lora", "dora": "dora", "hira": "hira"}


def stock_peft_adapter(kind: str, directory, seed: int = 3):
    """A PEFT model of `kind` on a fresh dllm-tiny, saved to `directory` with PEFT's save_pretrained; returned."""
    torch.manual_seed(seed)
    model = peft.get_peft_model(load_backbone(DEFAULT).model, KINDS[kind]()).eval()
    model.save_pretrained(str(directory))
    return model


@pytest.fixture
def input_ids():
    return torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_eval_model_class_gives_stock_peft_logits(kind, tmp_path, input_ids):
    reference = stock_peft_adapter(kind, tmp_path / "peft")
    lm = DllmPeftLM(pretrained=DEFAULT, adapter=str(tmp_path / "peft"), device="cpu")
    assert read_adapter(tmp_path / "peft")[0]["method"] == METHOD_OF[kind]
    with torch.no_grad():
        ours = lm.backbone.logits(input_ids)
        theirs = reference(input_ids=input_ids).logits
        base = load_backbone(DEFAULT).logits(input_ids)
    assert (theirs - base).abs().max() > 1e-2  # the adapter changes the output, so equality below means something
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)  # DoRA: its row norm is summed in another order


@pytest.mark.parametrize("kind", ["lora", "dora", "hira"])
def test_merge_equals_peft_merge_and_unload(kind, tmp_path):
    reference = stock_peft_adapter(kind, tmp_path / "peft")
    # float32: PEFT merges into the float32 model in memory; by default merge would write dllm-tiny's bfloat16
    merge_adapter(MergeConfig(adapter=str(tmp_path / "peft"), model=DEFAULT, output=str(tmp_path / "merged"),
                              dtype="float32", device="cpu"))
    merged = load_backbone(str(tmp_path / "merged"), device="cpu").model.state_dict()
    expected = reference.merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_round_trip_stock_peft_to_dllm_peft_to_export(tmp_path, input_ids):
    reference = stock_peft_adapter("lora", tmp_path / "peft")
    export_adapter(ExportConfig(adapter=str(tmp_path / "peft"), output=str(tmp_path / "export")))
    again = peft.PeftModel.from_pretrained(load_backbone(DEFAULT).model, str(tmp_path / "export")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=input_ids).logits, reference(input_ids=input_ids).logits,
                                   atol=1e-5, rtol=0)


def test_alpha_pattern_is_folded_into_b(tmp_path, input_ids):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, alpha_pattern={"v_proj": 2}, target_modules=["q_proj", "v_proj"],
                             init_lora_weights=False)
    reference = peft.get_peft_model(load_backbone(DEFAULT).model, config).eval()
    reference.save_pretrained(str(tmp_path / "peft"))
    lm = DllmPeftLM(pretrained=DEFAULT, adapter=str(tmp_path / "peft"), device="cpu")
    assert read_adapter(tmp_path / "peft")[0]["scale"] == 1.0
    with torch.no_grad():
        torch.testing.assert_close(lm.backbone.logits(input_ids), reference(input_ids=input_ids).logits,
                                   atol=1e-5, rtol=0)


def test_a_target_the_model_lacks_is_one_sentence_listing_its_linear_layers(tmp_path):
    stock_peft_adapter("lora", tmp_path / "peft")
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = {key.replace("blocks.0.q_proj", "blocks.0.query"): value for key, value in load_file(weights).items()}
    save_file(tensors, str(weights))
    with pytest.raises(DllmPeftError, match=r"does not have \(first: 'model.transformer.blocks.0.query'\); its linear "
                                            r"layers are: .*model\.transformer\.blocks\.N\.q_proj"):
        DllmPeftLM(pretrained=DEFAULT, adapter=str(tmp_path / "peft"), device="cpu")


def test_unsupported_peft_settings_are_refused_by_name(tmp_path):
    stock_peft_adapter("lora", tmp_path / "peft")
    config_file = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "bias": "all"}))
    with pytest.raises(DllmPeftError, match=r"sets bias='all', so it trains biases"):
        read_adapter(tmp_path / "peft")


def test_a_pickled_peft_adapter_is_refused_with_the_fix(tmp_path):
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(DllmPeftError, match="safe_serialization=True"):
        read_adapter(tmp_path / "peft")


def test_train_continues_a_stock_peft_lora(tmp_path):
    reference = stock_peft_adapter("lora", tmp_path / "peft")
    peft_a = reference.base_model.model.model.transformer.blocks[0].q_proj.lora_A["default"].weight.detach().clone()
    settings = {"method": "lora", "data": "builtin:lastdigit", "max_steps": 1, "batch_size": 2, "val_size": 0,
                "lr": 1e-4, "init_adapter": str(tmp_path / "peft"), "output": str(tmp_path / "out"), "device": "cpu"}
    train(TrainConfig(**settings))
    record, tensors = read_adapter(tmp_path / "out")
    assert record["method"] == "lora" and record["rank"] == 4 and record["scale"] == 2.0
    continued = tensors["model.transformer.blocks.0.q_proj.lora_A"]
    assert 0 < (continued - peft_a).abs().max() < 1e-3  # one small step away from PEFT's values, not a fresh init
    with pytest.raises(DllmPeftError, match="pass --method lora"):
        train(TrainConfig(**{**settings, "method": "nara", "output": str(tmp_path / "other")}))


def test_peft_adapter_for_another_model_names_the_shape(tmp_path):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    peft.get_peft_model(tiny_llada().model, config).save_pretrained(str(tmp_path / "peft"))
    with pytest.raises(DllmPeftError, match="has shape"):
        DllmPeftLM(pretrained=DEFAULT, adapter=str(tmp_path / "peft"), device="cpu")
