"""The embedded default model `dllm-tiny`: a small masked-diffusion LLaDA shipped inside the package.

Its weights live in `dllm_peft/models/default/` as an ordinary LLaDA checkpoint directory:

    config.json          LLaDAConfig (model_type "llada"), the recipe that made it under "dllm_tiny_recipe"
    model.safetensors    the state dict in bfloat16 (half the bytes of float32; upcast on load)
    byte_tokenizer.json  the marker of `ByteTokenizer` (bytes 0–255, EOS 256, mask 257)
    tokenizer.json, tokenizer_config.json   the same tokenizer as a `tokenizers` file, for `AutoTokenizer`

It was pretrained from scratch with this project's own masked-diffusion loss by
`benchmarks/default_model/build.py` (corpus, steps, seed and wall time are in that folder's README), so a fresh
machine can run `dllm-peft train --method nara` with no download. `write_checkpoint` is the one writer of this
layout (the recipe uses it) and `load_checkpoint` the one reader, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..atomic import atomic_save_tensors, atomic_write_bytes
from ..errors import DllmPeftError
from .backbone import Backbone
from .byte_tokenizer import TOKENIZER_FILE, ByteTokenizer

DEFAULT_MODEL_NAME = "dllm-tiny"
SHIPPED_DIR = Path(__file__).resolve().parent / "default"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STORAGE_DTYPE = torch.bfloat16


def write_checkpoint(model: torch.nn.Module, directory: str | Path, recipe: dict[str, Any] | None = None) -> Path:
    """Write `model` (a `LLaDAModelLM`) as a checkpoint directory that `load_checkpoint` reads.

    Args:
        model: the trained LLaDA; its float tensors are stored in bfloat16.
        directory: created if missing; existing files are replaced atomically, one by one.
        recipe: how the weights were made (corpus, steps, seed, ...); kept in config.json and the safetensors header.
    Returns:
        The directory.
    """
    directory = Path(directory)
    record = model.config.to_dict()
    record["torch_dtype"] = "bfloat16"
    if recipe is not None:
        record["dllm_tiny_recipe"] = recipe
    tensors = {
        name: (tensor.to(STORAGE_DTYPE) if tensor.is_floating_point() else tensor)
        for name, tensor in model.state_dict().items()
    }
    metadata = {"format": "pt", "recipe": json.dumps(recipe or {})}
    atomic_save_tensors(tensors, directory / WEIGHTS_FILE, metadata)
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    ByteTokenizer().save_pretrained(directory)
    for file in (WEIGHTS_FILE, CONFIG_FILE):  # the atomic writer's temporary files are private (0600); these are data
        os.chmod(directory / file, 0o644)
    return directory


def load_checkpoint(directory: str | Path, name: str) -> Backbone:
    """The float32 `Backbone` stored in `directory` (written by `write_checkpoint`), called `name` in adapter files."""
    from .llada import LLADA_TARGETS, LLaDAConfig, LLaDAModelLM

    directory = Path(directory)
    missing = [file for file in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE) if not (directory / file).is_file()]
    if missing:
        raise DllmPeftError(
            f"model directory {str(directory)!r} lacks {', '.join(missing)}; reinstall dllm-peft or rebuild it with "
            "`python benchmarks/default_model/build.py`"
        )
    record = json.loads((directory / CONFIG_FILE).read_text())
    record.pop("dllm_tiny_recipe", None)
    config = LLaDAConfig(**{key: value for key, value in record.items() if key != "model_type"})
    tokenizer = ByteTokenizer.from_pretrained(directory)
    with torch.device("meta"):  # no time spent on a random init that the stored weights replace
        model = LLaDAModelLM(config)
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as stored:
        state = {key: stored.get_tensor(key).float() for key in stored.keys()}
    model.load_state_dict(state, strict=True, assign=True)
    return Backbone(
        model=model.eval(),
        tokenizer=tokenizer,
        mask_id=tokenizer.mask_token_id,
        eos_id=tokenizer.eos_token_id,
        name=name,
        default_targets=LLADA_TARGETS,
        max_length=config.max_sequence_length,
    )


def dllm_tiny() -> Backbone:
    """The shipped default model (see the module docstring)."""
    return load_checkpoint(SHIPPED_DIR, DEFAULT_MODEL_NAME)


def shipped_recipe() -> dict[str, Any]:
    """How the shipped weights were made: the `dllm_tiny_recipe` record of their config.json."""
    return json.loads((SHIPPED_DIR / CONFIG_FILE).read_text()).get("dllm_tiny_recipe", {})
