"""Checkpoint directories: where a model is, which architecture it holds, which code may run it, and its tokenizer.

dllm-peft loads models offline only. `--model` is a built-in name, a local directory with a `config.json`, or a hub
name (`org/name`) that is already in the Hugging Face cache; nothing is downloaded and no network call is made
(`local_files_only=True` everywhere), so a hub name that is not cached is an error that suggests a local path.

Architectures (`Family`), decided from `config.json` alone:
  * `llada` and `dream` run on our native classes (`llada.py`, `dream.py`) although their configs carry an
    `auto_map` to the authors' remote code: that code is never needed and never run, with or without the flag;
  * `mdlm` (model_type "mdlm", with an `auto_map` that is never run) and `sedd` (the authors' Hydra config, no
    model_type) run on our native DiT (`mdlm.py`, `sedd.py`); neither ships a tokenizer: GPT-2's goes in the folder;
  * `masked_lm`: every model type transformers can load with `AutoModelForMaskedLM` (BERT, RoBERTa, ModernBERT, …);
  * `remote`: any other checkpoint that ships its own code (`auto_map`) — only with `trust_remote_code`, because
    that code is Python from the checkpoint directory running with the user's rights.

Special ids: the mask id comes from the tokenizer's mask token, else `mask_token_id` of `config.json` (LLaDA's
tokenizer does not declare `<|mdm_mask|>` as its mask token); the EOS id from the tokenizer, else the config, else
the separator token of BERT-style tokenizers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from ..errors import DllmPeftError
from .byte_tokenizer import TOKENIZER_FILE, ByteTokenizer
from .dream import DREAM_TOKENIZER_CLASS, is_dream_model_type
from .mdlm import is_mdlm_config
from .sedd import is_sedd_config

Family = Literal["llada", "dream", "mdlm", "sedd", "masked_lm", "remote"]
DIT_FAMILIES = ("mdlm", "sedd")  # time-conditioned DiTs; their mask id is the last row, vocab_size − 1

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
# Which Auto class runs remote code, best first: a denoiser is a masked LM; LLaDA-style repos register AutoModel.
REMOTE_AUTO_CLASSES = ("AutoModelForMaskedLM", "AutoModel", "AutoModelForCausalLM")
REMOTE_CODE_RISK = "it runs Python code from that directory with your user's rights, so use it only for code you trust"


def locate_checkpoint(name_or_path: str, builtin_names: list[str]) -> Path:
    """The local directory that `name_or_path` names: an existing path, or a hub name found in the local HF cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DllmPeftError(f"--model {name_or_path!r} is a file; pass the checkpoint directory that holds config.json")
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if not looks_like_path and HUB_NAME.fullmatch(name_or_path):
        try:  # a cache lookup only: local_files_only never touches the network
            return Path(snapshot_download(name_or_path, local_files_only=True))
        except LocalEntryNotFoundError:
            raise DllmPeftError(
                f"--model {name_or_path!r} is not a local directory, and as a Hugging Face hub name it is not in the "
                f"local cache: dllm-peft loads models offline, so download it once (`hf download {name_or_path} "
                "--local-dir DIR`) and pass --model DIR"
            ) from None
    if looks_like_path:
        raise DllmPeftError(f"model directory {name_or_path!r} does not exist; check the path passed to --model")
    raise DllmPeftError(
        f"unknown model {name_or_path!r}: not a built-in model ({', '.join(builtin_names)}) and no directory of that "
        "name exists; pass a checkpoint directory"
    )


def read_model_config(directory: Path) -> dict[str, Any]:
    """The raw `config.json` of a checkpoint directory."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise DllmPeftError(f"{directory} has no config.json; pass a checkpoint directory (e.g. a save_pretrained one)")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DllmPeftError(f"{config_file} is not valid JSON ({error.msg} at line {error.lineno})") from None


def architecture_family(config: dict[str, Any], directory: Path, trust_remote_code: bool) -> Family:
    """Which loader runs this checkpoint; refuses remote code unless `trust_remote_code` (the remote-code policy)."""
    model_type = config.get("model_type")
    if is_sedd_config(config):
        return "sedd"
    if is_mdlm_config(config):
        return "mdlm"
    if model_type == "llada":
        return "llada"
    if is_dream_model_type(model_type):
        return "dream"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked_lm"
    if "auto_map" in config:
        if trust_remote_code:
            return "remote"
        raise DllmPeftError(
            f"{directory} (model_type {model_type!r}) needs the model code shipped in its directory; pass "
            f"--trust-remote-code to run it, but know that {REMOTE_CODE_RISK}"
        )
    if model_type in CONFIG_MAPPING_NAMES:
        raise DllmPeftError(
            f"{directory} holds a {model_type!r} model, which dllm-peft cannot run as a one-pass masked denoiser; "
            "use a LLaDA, Dream or masked-LM checkpoint (BERT, RoBERTa, ModernBERT, …), or one that ships its code, "
            "with --trust-remote-code"
        )
    raise DllmPeftError(
        f"{directory}: model_type {model_type!r} is unknown to transformers and config.json has no auto_map naming its "
        "code; use a LLaDA, Dream or masked-LM checkpoint"
    )


def remote_auto_class(config: dict[str, Any], directory: Path) -> str:
    """The transformers Auto class whose remote code the checkpoint registers (see `REMOTE_AUTO_CLASSES`)."""
    for name in REMOTE_AUTO_CLASSES:
        if name in config["auto_map"]:
            return name
    raise DllmPeftError(
        f"the auto_map of {directory / 'config.json'} registers none of {', '.join(REMOTE_AUTO_CLASSES)}; "
        "dllm-peft cannot tell which class is the denoiser"
    )


def load_tokenizer(directory: Path, family: Family, trust_remote_code: bool):
    """The checkpoint's tokenizer, loaded offline; native families never run a custom tokenizer class."""
    if (directory / TOKENIZER_FILE).is_file():
        try:
            return ByteTokenizer.from_pretrained(directory)
        except ValueError as error:
            raise DllmPeftError(f"{error}; rewrite it with ByteTokenizer().save_pretrained") from None
    has_tokenizer = any((directory / name).is_file() for name in TOKENIZER_FILES)
    if not has_tokenizer and family in DIT_FAMILIES:
        raise DllmPeftError(
            f"{directory} holds no tokenizer, and {family.upper()} checkpoints ship none: the authors use GPT-2's, so "
            "copy GPT-2's tokenizer files into it (`hf download gpt2 tokenizer.json tokenizer_config.json vocab.json "
            f"merges.txt --local-dir {directory}`)"
        )
    if not has_tokenizer:
        raise DllmPeftError(
            f"{directory} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); copy the base model's tokenizer files "
            "into it"
        )
    if family != "remote" and _names_custom_tokenizer(directory):
        # Dream ships `DreamTokenizer` (a copy of Qwen2's); other native checkpoints keep their tokenizer.json.
        substitute = DREAM_TOKENIZER_CLASS if family == "dream" else PreTrainedTokenizerFast
        return substitute.from_pretrained(directory, local_files_only=True)
    return AutoTokenizer.from_pretrained(
        directory, local_files_only=True, trust_remote_code=trust_remote_code and family == "remote"
    )


def _names_custom_tokenizer(directory: Path) -> bool:
    config_file = directory / "tokenizer_config.json"
    if not config_file.is_file():
        return False
    auto_map = json.loads(config_file.read_text(encoding="utf-8")).get("auto_map", {})
    return "AutoTokenizer" in auto_map


def special_token_ids(tokenizer, config: dict[str, Any], directory: Path, rows: int) -> tuple[int, int]:
    """(mask id, EOS id) of a checkpoint; `rows` is the size of its embedding table (ids must fit in it)."""
    mask_id = _first_id(getattr(tokenizer, "mask_token_id", None), config.get("mask_token_id"))
    if mask_id is None:
        raise DllmPeftError(
            f"{directory} has no mask token (neither its tokenizer nor config.json's mask_token_id names one); add "
            "one with tokenizer.add_special_tokens({'mask_token': '<|mask|>'}) and model.resize_token_embeddings("
            "len(tokenizer)), save both, or use a model trained with a mask token"
        )
    eos_id = _first_id(
        getattr(tokenizer, "eos_token_id", None), config.get("eos_token_id"), getattr(tokenizer, "sep_token_id", None)
    )
    if eos_id is None:
        raise DllmPeftError(
            f"{directory} has no end-of-sequence token (tokenizer eos/sep or config.json eos_token_id); add one with "
            "tokenizer.add_special_tokens({'eos_token': ...}) and save the tokenizer"
        )
    for name, token_id in (("mask", mask_id), ("EOS", eos_id)):
        if not 0 <= token_id < rows:
            raise DllmPeftError(
                f"the {name} id {token_id} of {directory} lies outside the model's {rows} embedding rows; resize the "
                "embeddings to the tokenizer (model.resize_token_embeddings) and save the model again"
            )
    return mask_id, eos_id


def _first_id(*candidates) -> int | None:
    """The first candidate that is set; a config's list of EOS ids contributes its first entry."""
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return None
