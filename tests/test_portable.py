"""Loading without dllm-peft: merged checkpoints and the default model's tokenizer work with transformers alone, and
exports name a base model that others can resolve (`models/portable.py`, `models/byte_tokenizer.py`)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer

from dllm_peft.adapters.files import save_adapter
from dllm_peft.adapters.merge import merge_adapter
from dllm_peft.config import MergeConfig
from dllm_peft.models import dream, llada, load_backbone
from dllm_peft.models.byte_tokenizer import ByteTokenizer
from dllm_peft.models.default import SHIPPED_DIR
from dllm_peft.models.portable import base_reference

from .test_export import default_model_adapter, logits

TEXTS = ["12+5=17", "héllo wörld ✓ 你好\n\t  x", " leading space", ""]

# Runs in a fresh interpreter started with -S: site-packages is put on the path by hand, so no .pth file runs (our
# editable install and lm-eval hook are .pth files) and dllm_peft cannot even be found, let alone imported.
LOAD_ALONE = textwrap.dedent("""
    import importlib.util
    import sys
    sys.path.append(sys.argv.pop(1))
    assert importlib.util.find_spec("dllm_peft") is None, "dllm_peft is importable"
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    folder, text, out = sys.argv[1:]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False) + [tokenizer.mask_token_id] * 4])
    with torch.no_grad():
        save_file({"ids": ids, "logits": model(input_ids=ids).logits}, out)
    assert type(model).__module__.startswith("transformers_modules"), type(model)  # the copied modeling file
""")


def test_merged_default_model_loads_without_dllm_peft(tmp_path):
    trained = default_model_adapter("lora")
    save_adapter(trained, tmp_path / "adapter")
    merge_adapter(MergeConfig(adapter=str(tmp_path / "adapter"), output=str(tmp_path / "merged"), dtype="float32",
                              device="cpu"))
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    text = "12+5= ✓"
    site_packages = sysconfig.get_paths()["purelib"]
    command = [sys.executable, "-S", "-c", LOAD_ALONE, site_packages, str(tmp_path / "merged"), text,
               str(tmp_path / "out.st")]
    finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    alone = load_file(tmp_path / "out.st")
    project = load_backbone(str(tmp_path / "merged"), device="cpu")
    expected_ids = torch.tensor([project.encode(text) + [project.mask_id] * 4])
    assert torch.equal(alone["ids"], expected_ids)
    torch.testing.assert_close(alone["logits"], logits(project, expected_ids), atol=0, rtol=0)
    # the merged model is the adapted one (float32 merge: only the order of the sums differs)
    torch.testing.assert_close(alone["logits"], logits(trained, expected_ids), atol=1e-4, rtol=0)


def test_merge_keeps_a_bfloat16_base_in_bfloat16(tmp_path):
    save_adapter(default_model_adapter("lora"), tmp_path / "adapter")
    merge_adapter(MergeConfig(adapter=str(tmp_path / "adapter"), output=str(tmp_path / "merged"), device="cpu"))
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as reader:
        dtypes = {reader.get_tensor(name).dtype for name in reader.keys()}
    assert dtypes == {torch.bfloat16}
    assert json.loads((tmp_path / "merged" / "merged_from.json").read_text())["dtype"] == "bfloat16"


def test_default_tokenizer_is_a_tokenizers_file_with_the_same_ids():
    assert (SHIPPED_DIR / "tokenizer.json").is_file()
    theirs, ours = AutoTokenizer.from_pretrained(str(SHIPPED_DIR)), ByteTokenizer()
    assert (theirs.eos_token_id, theirs.mask_token_id, theirs.pad_token_id) == (256, 257, 256)
    for text in TEXTS:
        ids = theirs.encode(text, add_special_tokens=False)
        assert ids == ours.encode(text)
        with_specials = [*ids, 256, 257, 259, *ids]
        for skip in (True, False):
            assert theirs.decode(with_specials, skip_special_tokens=skip) == ours.decode(with_specials, skip)


@pytest.mark.parametrize("module", [llada, dream])
def test_model_code_copied_into_checkpoints_imports_nothing_of_ours(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name.startswith("dllm_peft")]
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]


def test_base_reference_names_what_others_can_resolve(tmp_path):
    assert base_reference("dllm-tiny").name_or_path == str(SHIPPED_DIR)
    assert "import dllm_peft.models" in base_reference("dllm-tiny").prelude
    assert base_reference(None).name_or_path is None
    assert base_reference("GSAI-ML/LLaDA-8B-Base").name_or_path == "GSAI-ML/LLaDA-8B-Base"
    cached = tmp_path / "hub" / "models--GSAI-ML--LLaDA-8B-Base" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text(json.dumps({"model_type": "llada"}))
    assert (base_reference(str(cached)).name_or_path, base_reference(str(cached)).auto_class) == (
        "GSAI-ML/LLaDA-8B-Base", "AutoModel")
    local = tmp_path / "bert"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "bert"}))
    reference = base_reference(os.path.relpath(local))
    assert (reference.name_or_path, reference.auto_class) == (str(local.resolve()), "AutoModelForMaskedLM")
