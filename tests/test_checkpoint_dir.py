"""Finding and vetting checkpoint directories: offline hub names, the remote-code policy and clear errors."""

from __future__ import annotations

import json
import shutil
import socket

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

from dllm_peft.errors import DllmPeftError
from dllm_peft.models import infer_targets, load_backbone
from dllm_peft.models.llada import LLaDAModelLM

from .tiny_checkpoints import (
    isolate_remote_code,
    word_tokenizer,
    write_llada,
    write_remote,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test here may reach the network, and remote code may only be copied into this test's directory."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    isolate_remote_code(monkeypatch, tmp_path / "modules")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("source") / "llada"
    write_llada(directory)
    return directory


def copy_of(directory, tmp_path):
    return shutil.copytree(directory, tmp_path / "copy")


# -- where the model is --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/no/such/checkpoint", "./missing-dir", "~/missing/llada"])
def test_a_path_that_does_not_exist(name):
    with pytest.raises(DllmPeftError, match=r"model directory .* does not exist; check the path"):
        load_backbone(name)


def test_an_unknown_bare_name_lists_the_built_in_models():
    with pytest.raises(DllmPeftError, match=r"unknown model 'llada-8b': not a built-in model \(.*tiny-llada.*\)"):
        load_backbone("llada-8b")


def test_a_hub_name_offline_says_so_and_suggests_a_local_path():
    with pytest.raises(DllmPeftError, match=r"is not a local directory, and as a Hugging Face hub name it is not in "
                                            r"the local cache: dllm-peft loads models offline, so download it once "
                                            r"\(`hf download GSAI-ML/LLaDA-8B-Instruct --local-dir DIR`\)"):
        load_backbone("GSAI-ML/LLaDA-8B-Instruct")


def test_a_hub_name_already_in_the_local_cache_loads(llada_dir, tmp_path):
    repo = tmp_path / "hub-cache" / "models--toy-org--tiny-llada"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(llada_dir, repo / "snapshots" / commit)
    backbone = load_backbone("toy-org/tiny-llada")
    assert isinstance(backbone.model, LLaDAModelLM) and backbone.name == "toy-org/tiny-llada"


def test_a_file_or_a_directory_without_config(llada_dir, tmp_path):
    with pytest.raises(DllmPeftError, match="is a file; pass the checkpoint directory"):
        load_backbone(str(llada_dir / "config.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DllmPeftError, match="has no config.json"):
        load_backbone(str(tmp_path / "empty"))


# -- what the checkpoint holds --------------------------------------------------------------------------------------
def test_remote_code_needs_the_flag_and_nothing_runs_without_it(tmp_path):
    write_remote(tmp_path / "toy")
    with pytest.raises(DllmPeftError, match=r"needs the model code shipped in its directory; pass --trust-remote-code "
                                            r"to run it, but know that it runs Python code"):
        load_backbone(str(tmp_path / "toy"))
    assert not (tmp_path / "modules").exists()  # no code was copied, let alone imported
    backbone = load_backbone(str(tmp_path / "toy"), trust_remote_code=True)
    assert type(backbone.model).__name__ == "ToyDenoiser" and backbone.default_targets == (
        "q_proj", "k_proj", "v_proj", "o_proj")


def test_native_architectures_ignore_the_remote_code_they_name(llada_dir):
    backbone = load_backbone(str(llada_dir), trust_remote_code=True)  # auto_map names absent files: never used
    assert type(backbone.model) is LLaDAModelLM


def test_an_autoregressive_model_is_refused(tmp_path):
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(DllmPeftError, match="holds a 'llama' model, which dllm-peft cannot run as a one-pass masked"):
        load_backbone(str(tmp_path))


def test_a_tokenizer_without_a_mask_token_says_how_to_add_one(tmp_path):
    tokenizer = word_tokenizer(["[PAD]", "[UNK]", "[SEP]"], tmp_path, pad_token="[PAD]", unk_token="[UNK]",
                               sep_token="[SEP]")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(DllmPeftError, match=r"has no mask token .*tokenizer.add_special_tokens\(\{'mask_token': "
                                            r".*model.resize_token_embeddings"):
        load_backbone(str(tmp_path))


def test_a_mask_id_beyond_the_embeddings(llada_dir, tmp_path):
    directory = copy_of(llada_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "mask_token_id": 126336}))
    with pytest.raises(DllmPeftError, match="mask id 126336 .* outside the model's 48 embedding rows"):
        load_backbone(str(directory))


def test_weights_under_other_key_names_are_an_error_not_a_random_model(llada_dir, tmp_path):
    directory = copy_of(llada_dir, tmp_path)
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"].pop("model.transformer.blocks.0.attn_out.weight")
    tensors = load_file(str(directory / shard))
    tensors["model.transformer.blocks.0.o_proj.weight"] = tensors.pop("model.transformer.blocks.0.attn_out.weight")
    save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    index["weight_map"]["model.transformer.blocks.0.o_proj.weight"] = shard
    index_file.write_text(json.dumps(index))
    with pytest.raises(DllmPeftError, match=r"has no weights for 1 parameter\(s\) of its 'llada' config "
                                            r"\(first: model.transformer.blocks.0.attn_out.weight\)"):
        load_backbone(str(directory))


def test_missing_weights_or_tokenizer(llada_dir, tmp_path):
    directory = copy_of(llada_dir, tmp_path)
    for shard in directory.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(DllmPeftError, match="holds no weights"):
        load_backbone(str(directory))
    directory = shutil.copytree(llada_dir, tmp_path / "no-tokenizer")
    (directory / "tokenizer.json").unlink()
    (directory / "tokenizer_config.json").unlink()
    with pytest.raises(DllmPeftError, match="holds no tokenizer .*copy the base model's tokenizer files"):
        load_backbone(str(directory))


def test_device_and_dtype_mistakes(llada_dir):
    with pytest.raises(DllmPeftError, match="unknown --dtype 'fp8'"):
        load_backbone(str(llada_dir), dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(DllmPeftError, match="no CUDA device is available; use --device cpu"):
            load_backbone(str(llada_dir), device="cuda")


# -- default targets of other naming schemes -------------------------------------------------------------------------
def test_targets_are_inferred_from_the_attention_naming_scheme():
    modernbert = ModernBertForMaskedLM(ModernBertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1))
    assert infer_targets(modernbert) == ("attn.Wqkv", "attn.Wo")  # not the MLP's mlp.Wo
    distilbert = DistilBertForMaskedLM(DistilBertConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    assert infer_targets(distilbert) == ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin")
    assert infer_targets(torch.nn.Sequential(torch.nn.Linear(4, 4))) == ()
