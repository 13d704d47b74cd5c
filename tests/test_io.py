"""Adapter files: self-describing safetensors, and clear failures for damaged or foreign files."""

from __future__ import annotations

import json

import pytest

from dllm_peft.adapters.base import adapter_layers, inject
from dllm_peft.adapters.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_adapter,
    read_adapter,
    save_adapter,
)
from dllm_peft.adapters.nara import NaraConfig, NaraLayer
from dllm_peft.errors import DllmPeftError
from dllm_peft.models import tiny_llada


@pytest.fixture
def saved(tmp_path):
    backbone = tiny_llada(seed=0)
    inject(backbone.model, NaraConfig(rank=4), NaraLayer, backbone.default_targets)
    save_adapter(backbone, tmp_path / "adapter")
    return tmp_path / "adapter"


def test_the_directory_holds_config_and_weights_with_embedded_metadata(saved):
    record = json.loads((saved / CONFIG_FILE).read_text())
    assert record["method"] == "nara" and record["base_model"] == "tiny-llada" and record["rank"] == 4
    assert "dllm_peft_version" in record and len(record["adapted_modules"]) == 8
    file_record, tensors = read_adapter(saved / WEIGHTS_FILE)  # the file alone describes itself
    assert file_record == record
    assert "dllm_peft_router.shared.shared.embedding.frequencies" in tensors
    assert not any("base_layer" in name for name in tensors)


def test_a_truncated_file_is_a_clear_error(saved):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(DllmPeftError, match="not a readable safetensors"):
        read_adapter(saved)


def test_a_pickle_file_is_refused(tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(DllmPeftError, match="not a readable safetensors"):
        read_adapter(path)


def test_an_adapter_for_a_different_base_is_refused(saved):
    wider = tiny_llada(seed=0, d_model=32)
    with pytest.raises(DllmPeftError, match="has shape .* but this model needs"):
        load_adapter(wider, saved)
    assert not adapter_layers(wider.model)  # no half-loaded adapter left behind


def test_an_unknown_method_is_refused(saved, tmp_path):
    record, tensors = read_adapter(saved)
    from safetensors.torch import save_file

    record["method"] = "nope"
    save_file(tensors, tmp_path / "x.safetensors", metadata={"dllm_peft_config": json.dumps(record)})
    with pytest.raises(DllmPeftError, match="unknown method 'nope'; choose one of: lora"):
        load_adapter(tiny_llada(), tmp_path / "x.safetensors")


def test_missing_tensors_are_refused(saved, tmp_path):
    record, tensors = read_adapter(saved)
    from safetensors.torch import save_file

    tensors.pop(next(iter(tensors)))
    save_file(tensors, tmp_path / "x.safetensors", metadata={"dllm_peft_config": json.dumps(record)})
    with pytest.raises(DllmPeftError, match="does not fit this model: missing"):
        load_adapter(tiny_llada(), tmp_path / "x.safetensors")
