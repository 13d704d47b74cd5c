"""Merge: merged logits equal adapter logits for every mergeable method (NaRA at a chosen λ), the checkpoint on disk
is read by transformers and `load_backbone`, and every expected mistake is one sentence with exit status 2."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import typer.main
from safetensors.torch import save_file
from transformers import AutoModelForMaskedLM

from dllm_peft.adapters.base import adapter_layers, inject
from dllm_peft.adapters.files import WEIGHTS_FILE, read_adapter, save_adapter
from dllm_peft.adapters.merge import PROVENANCE_FILE, merge_into_base
from dllm_peft.adapters.registry import METHODS, build_adapter_config
from dllm_peft.cli import app, main
from dllm_peft.config import ExportConfig, InspectConfig, MergeConfig
from dllm_peft.diffusion.conditioning import noise_level
from dllm_peft.models import load_backbone, tiny_llada

from .conftest import randomize_adapter

MERGEABLE = sorted(name for name, method in METHODS.items() if method.mergeable)


def random_adapter(method: str, seed: int = 0, **model_overrides):
    """A tiny LLaDA with a randomised `method` adapter, in eval mode (inject leaves new layers in training mode)."""
    backbone = tiny_llada(seed=seed, **model_overrides)
    config = build_adapter_config(method, rank=4)
    torch.manual_seed(seed)  # NaRA's Fourier frequencies are drawn at inject time
    inject(backbone.model, config, METHODS[method].layer_class, backbone.default_targets)
    randomize_adapter(backbone.model, seed=3)
    backbone.model.eval()
    return backbone


def logits(backbone, input_ids, level=None):
    with torch.no_grad(), noise_level(backbone.model, level):
        return backbone.logits(input_ids)


@pytest.fixture
def input_ids():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_logits_equal_adapter_logits(method, input_ids):
    backbone = random_adapter(method)
    level = 0.3 if METHODS[method].noise_dependent else None
    expected = logits(backbone, input_ids, level)
    assert not torch.allclose(expected, logits(tiny_llada(seed=0), input_ids), atol=1e-3)  # the adapter matters
    merged = merge_into_base(backbone.model, level)
    assert merged == 8 and not adapter_layers(backbone.model)
    assert set(backbone.model.state_dict()) == set(tiny_llada(seed=0).model.state_dict())
    torch.testing.assert_close(logits(backbone, input_ids), expected, atol=1e-4, rtol=0)


def test_nara_merged_at_a_level_equals_nara_run_at_that_level(input_ids):
    reference = random_adapter("nara")
    merged_logits = {}
    for level in (0.0, 0.5, 1.0):
        backbone = random_adapter("nara")
        merge_into_base(backbone.model, level)
        merged_logits[level] = logits(backbone, input_ids)
        torch.testing.assert_close(merged_logits[level], logits(reference, input_ids, level), atol=1e-4, rtol=0)
    assert (merged_logits[0.0] - merged_logits[1.0]).abs().max() > 1e-3  # a different λ is a different model


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def refused(argv, capsys, expected):
    code, out, err = run(argv, capsys)
    message = " ".join(err.split())
    assert code == 2 and expected in message, message
    assert "Traceback" not in err + out and message.count(". ") == 0  # one sentence


def test_merge_command_writes_a_checkpoint_that_transformers_and_load_backbone_read(tmp_path, capsys, input_ids):
    trained = random_adapter("nara")
    save_adapter(trained, tmp_path / "adapter")
    argv = ["merge", "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]
    code, out, _ = run([*argv, "--noise-level", "0.3", "--max-shard-size", "200KB"], capsys)
    assert code in (0, None) and "at λ = 0.3" in out
    files = {path.name for path in (tmp_path / "merged").iterdir()}
    shards = sorted(name for name in files if name.endswith(".safetensors"))
    assert len(shards) >= 2 and "model.safetensors.index.json" in files  # sharded
    assert {"config.json", "byte_tokenizer.json", PROVENANCE_FILE} <= files
    assert json.loads((tmp_path / "merged" / PROVENANCE_FILE).read_text())["noise_level"] == 0.3
    expected = logits(trained, input_ids, 0.3)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, expected, atol=1e-4, rtol=0)
    reloaded = load_backbone(str(tmp_path / "merged"))
    torch.testing.assert_close(logits(reloaded, input_ids), expected, atol=1e-4, rtol=0)
    # the output now holds a checkpoint: a second merge needs --overwrite, then replaces it at another λ
    refused([*argv, "--noise-level", "0.7"], capsys, "is not empty; pass --overwrite")
    code, _, _ = run([*argv, "--noise-level", "0.7", "--overwrite"], capsys)
    assert code in (0, None) and not list(tmp_path.glob(".merged.*"))  # no staging directory left behind
    assert json.loads((tmp_path / "merged" / PROVENANCE_FILE).read_text())["noise_level"] == 0.7


@pytest.fixture
def saved_nara(tmp_path):
    save_adapter(random_adapter("nara"), tmp_path / "adapter")
    return tmp_path / "adapter"


def rewritten(saved, tmp_path, change):
    """A copy of the adapter file whose record and tensors `change` edited in place."""
    record, tensors = read_adapter(saved)
    change(record, tensors)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, path, metadata={"dllm_peft_config": json.dumps(record)})
    return path


def test_nara_without_a_noise_level_is_refused_with_the_reason(saved_nara, tmp_path, capsys):
    argv = ["merge", "--adapter", str(saved_nara), "--output", str(tmp_path / "m")]
    refused(argv, capsys, "changes with the noise level λ")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("level", ["1.5", "-0.1"])
def test_a_noise_level_outside_zero_one_is_refused(saved_nara, tmp_path, capsys, level):
    argv = ["merge", "--adapter", str(saved_nara), "--output", str(tmp_path / "m"), "--noise-level", level]
    refused(argv, capsys, f"--noise-level must lie in [0, 1] (the masked fraction), got {float(level)}")


def test_damaged_and_foreign_files_are_refused(saved_nara, tmp_path, capsys):
    data = (saved_nara / WEIGHTS_FILE).read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    for name in ("truncated", "pickle"):
        argv = ["merge", "--adapter", str(tmp_path / f"{name}.safetensors"), "--noise-level", "0.5"]
        refused([*argv, "--output", str(tmp_path / "m")], capsys, "is not a readable safetensors adapter file")


def test_an_unknown_method_is_refused(saved_nara, tmp_path, capsys):
    path = rewritten(saved_nara, tmp_path, lambda record, tensors: record.update(method="nara-x"))
    refused(["merge", "--adapter", str(path), "--output", str(tmp_path / "m")], capsys, "unknown method 'nara-x'")


def test_an_adapter_for_another_base_is_refused(tmp_path, capsys):
    wider = random_adapter("lora", d_model=32)  # records base "tiny-llada" but has d_model-32 shapes
    save_adapter(wider, tmp_path / "wider")
    refused(["merge", "--adapter", str(tmp_path / "wider"), "--output", str(tmp_path / "m")], capsys, "has shape")

    def rename_modules(record, tensors):
        record["target_modules"] = ["wq"]
        for name in list(tensors):
            tensors[name.replace("q_proj", "wq")] = tensors.pop(name)

    save_adapter(random_adapter("lora"), tmp_path / "lora")
    path = rewritten(tmp_path / "lora", tmp_path, rename_modules)
    refused(["merge", "--adapter", str(path), "--output", str(tmp_path / "m")], capsys, "['wq'] match no linear layer")


def test_the_output_may_not_replace_the_adapter(saved_nara, capsys):
    argv = ["merge", "--adapter", str(saved_nara), "--output", str(saved_nara.parent), "--noise-level", "0.5"]
    refused([*argv, "--overwrite"], capsys, "would replace the input")
    assert (saved_nara / WEIGHTS_FILE).exists()


def test_the_base_model_can_be_named_instead_of_read_from_the_record(saved_nara, tmp_path, capsys):
    path = rewritten(saved_nara, tmp_path, lambda record, tensors: record.pop("base_model"))
    argv = ["merge", "--adapter", str(path), "--output", str(tmp_path / "m"), "--noise-level", "0.5"]
    refused(argv, capsys, "does not record its base model; name it with --model")
    code, out, _ = run([*argv, "--model", "tiny-llada"], capsys)
    assert code in (0, None) and "into tiny-llada" in out


def test_methods_without_a_weight_update_are_not_merged(tmp_path, capsys):
    save_adapter(random_adapter("houlsby"), tmp_path / "houlsby")
    argv = ["merge", "--adapter", str(tmp_path / "houlsby"), "--output", str(tmp_path / "m")]
    refused(argv, capsys, "houlsby adapters have no low-rank update to fold into the base weights")


@pytest.mark.parametrize(
    ("command", "config_class"), [("merge", MergeConfig), ("export", ExportConfig), ("inspect", InspectConfig)]
)
def test_flags_equal_the_config_fields(command, config_class):
    parameters = typer.main.get_command(app).commands[command].params
    assert {parameter.name for parameter in parameters} == {field.name for field in dataclasses.fields(config_class)}
