"""Backbones: `load_backbone(name_or_path)` → `Backbone` (model, tokenizer, mask/EOS ids, shifted logits, targets).

Built-in names are models constructed in code (no download): `tiny-llada` is a randomly initialised two-layer LLaDA
with a byte tokenizer, for tests and quick trials; `dllm-tiny` (`default.py`) is the small pretrained denoiser
shipped inside the package, the default `--model`. Everything else is a checkpoint directory on disk, loaded offline
(`checkpoint_dir.py` says where it is and what it holds): LLaDA and Dream on our native classes (`llada.py`,
`dream.py`, no remote code), the time-conditioned DiTs MDLM and SEDD on ours too (`mdlm.py`, `sedd.py`, `dit.py`),
masked LMs through `AutoModelForMaskedLM` (`masked_lm.py`), and other dLLMs through
the code they ship, only with `trust_remote_code`.

Default adapter targets are the attention projections of each architecture, as in the NaRA recipes (LLaDA: q_proj,
k_proj, v_proj, attn_out; Dream/Qwen2: q_proj, k_proj, v_proj, o_proj; MDLM/SEDD: attn_qkv, attn_out; BERT: query, key, value and the attention
output); for remote code, the first of these naming schemes that the model's linear layers follow.

May import: the shared leaves (`errors`, `atomic`, `config`) only; every other layer builds on this one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.utils import logging as hf_logging

from ..errors import DllmPeftError
from .backbone import Backbone
from .byte_tokenizer import ByteTokenizer
from .checkpoint_dir import (
    DIT_FAMILIES,
    Family,
    architecture_family,
    load_tokenizer,
    locate_checkpoint,
    read_model_config,
    remote_auto_class,
    special_token_ids,
)
from .default import DEFAULT_MODEL_NAME, dllm_tiny
from .dream import DREAM_TARGETS, DreamModel
from .llada import LLADA_TARGETS, LLaDAModelLM
from .masked_lm import MASKED_LM_TARGET_SETS, load_masked_lm, masked_lm_max_length
from .mdlm import DIT_TARGETS, load_mdlm
from .sedd import load_sedd
from .targets import resolve_targets

KNOWN_TARGET_SETS = (LLADA_TARGETS, DREAM_TARGETS, DIT_TARGETS, *MASKED_LM_TARGET_SETS)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def tiny_llada(seed: int = 0, **overrides) -> Backbone:
    """A randomly initialised tiny LLaDA (two blocks, d_model 64) with the byte tokenizer."""
    from .llada import tiny_llada_config

    tokenizer = ByteTokenizer()
    config = tiny_llada_config(
        mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id, **overrides
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LLaDAModelLM(config).eval()
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        mask_id=tokenizer.mask_token_id,
        eos_id=tokenizer.eos_token_id,
        name="tiny-llada",
        default_targets=LLADA_TARGETS,
        max_length=config.max_sequence_length,
    )


BUILTIN_MODELS = {"tiny-llada": tiny_llada, DEFAULT_MODEL_NAME: dllm_tiny}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA, else Apple's MPS, else the CPU. A device this machine lacks is one sentence, not a traceback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DllmPeftError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    fallback = "use --device cpu or auto"
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DllmPeftError(f"--device {device} was asked for but no CUDA device is available; {fallback}")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DllmPeftError(
                f"--device {device} names GPU {resolved.index}, but this machine has {torch.cuda.device_count()}"
            )
    elif resolved.type == "mps" and not _mps_available():
        raise DllmPeftError(f"--device {device} was asked for but Apple's MPS is not available here; {fallback}")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise DllmPeftError(f"--device {device} is not supported; use auto, cpu, cuda or mps")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it, float32 elsewhere (CPU kernels for half types are slow)."""
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise DllmPeftError(f"unknown --dtype {dtype!r}; choose auto or one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def stored_dtype(name_or_path: str) -> str:
    """The dtype a model's weights are stored in (a `DTYPES` name), or `auto` when its files do not say."""
    if name_or_path in BUILTIN_MODELS:
        return "bfloat16" if name_or_path == DEFAULT_MODEL_NAME else "float32"  # dllm-tiny ships bfloat16 weights
    config = read_model_config(locate_checkpoint(name_or_path, list(BUILTIN_MODELS)))
    recorded = config.get("dtype") or config.get("torch_dtype")
    return recorded if recorded in DTYPES else "auto"


def load_backbone(
    name_or_path: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> Backbone:
    """The backbone called `name_or_path`, on `device` in `dtype`, loaded without network access.

    Args:
        name_or_path: a built-in name (`tiny-llada`), a checkpoint directory, or a hub name already in the HF cache.
        dtype: `auto` (bfloat16 on a GPU that has it, else float32), `float32`, `bfloat16` or `float16`.
        device: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
        trust_remote_code: allow running the model code a checkpoint ships; never needed (nor used) for LLaDA,
            Dream and masked LMs.
    """
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    if name_or_path in BUILTIN_MODELS:
        backbone = BUILTIN_MODELS[name_or_path]()
        backbone.model.to(device=target_device, dtype=target_dtype)
        return backbone
    directory = locate_checkpoint(name_or_path, list(BUILTIN_MODELS))
    return _load_checkpoint(directory, name_or_path, target_dtype, target_device, trust_remote_code)


def _load_checkpoint(
    directory: Path, name: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool
) -> Backbone:
    config = read_model_config(directory)
    family = architecture_family(config, directory, trust_remote_code)
    if family in DIT_FAMILIES:
        return _load_dit(directory, name, family, config, dtype, device)
    if not any(any(directory.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise DllmPeftError(f"{directory} holds no weights (*.safetensors); pass the directory the model was saved to")
    # Shards are read one at a time into an empty (meta) model, in the target dtype and, with device_map, straight
    # onto the GPU: peak memory stays near the size of the model, never twice it.
    load_kwargs: dict[str, Any] = dict(
        dtype=dtype, local_files_only=True, low_cpu_mem_usage=True, trust_remote_code=family == "remote"
    )
    if device.type != "cpu":
        load_kwargs["device_map"] = {"": device}
    with _quiet_transformers():
        tokenizer = load_tokenizer(directory, family, trust_remote_code)
        model, loading_info = _load_model(directory, family, config, load_kwargs)
    if loading_info["missing_keys"]:
        missing = sorted(loading_info["missing_keys"])
        raise DllmPeftError(
            f"{directory} has no weights for {len(missing)} parameter(s) of its {config.get('model_type')!r} config "
            f"(first: {missing[0]}); the checkpoint is incomplete or its key names do not match the architecture"
        )
    model.to(device).eval()
    mask_id, eos_id = special_token_ids(tokenizer, config, directory, model.get_input_embeddings().num_embeddings)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        mask_id=mask_id,
        eos_id=eos_id,
        name=name,
        default_targets=_default_targets(model, family),
        shift_logits=family == "dream",
        max_length=_max_length(model, family),
    )


def _load_dit(
    directory: Path, name: str, family: Family, config: dict[str, Any], dtype: torch.dtype, device: torch.device
) -> Backbone:
    """MDLM or SEDD: our DiT with the authors' weights, the tokenizer placed beside them (GPT-2's), mask id V − 1."""
    with _quiet_transformers():
        tokenizer = load_tokenizer(directory, family, trust_remote_code=False)
    model = (load_mdlm if family == "mdlm" else load_sedd)(directory, config, dtype, device)
    # GPT-2 declares no mask token; the id is the model's last row whatever the tokenizer says
    _, eos_id = special_token_ids(tokenizer, {"mask_token_id": model.mask_id}, directory, model.config.vocab_size)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        mask_id=model.mask_id,
        eos_id=eos_id,
        name=name,
        default_targets=DIT_TARGETS,
        max_length=model.config.model_length,
    )


def _load_model(directory: Path, family: Family, config: dict[str, Any], load_kwargs: dict[str, Any]):
    """(model, loading info): the info lists the parameters the checkpoint did not provide."""
    if family == "masked_lm":
        return load_masked_lm(directory, **load_kwargs)
    if family == "llada":
        model_class = LLaDAModelLM
    elif family == "dream":
        model_class = DreamModel
    else:
        model_class = getattr(transformers, remote_auto_class(config, directory))
    return model_class.from_pretrained(directory, output_loading_info=True, **load_kwargs)


def _default_targets(model: nn.Module, family: Family) -> tuple[str, ...]:
    if family == "llada":
        return LLADA_TARGETS
    if family == "dream":
        return DREAM_TARGETS
    return infer_targets(model, MASKED_LM_TARGET_SETS if family == "masked_lm" else KNOWN_TARGET_SETS)


def infer_targets(model: nn.Module, candidates=KNOWN_TARGET_SETS) -> tuple[str, ...]:
    """The first candidate set whose every name selects a linear layer; () if none does (then --targets is needed)."""
    for targets in candidates:
        try:
            resolve_targets(model, targets)
        except DllmPeftError:
            continue
        return tuple(targets)
    return ()


def _max_length(model: nn.Module, family: Family) -> int | None:
    if family == "masked_lm":
        return masked_lm_max_length(model)
    config = model.config
    limit = getattr(config, "max_sequence_length", None) or getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The core never prints: mute transformers' progress bars and advice while loading, then restore them."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


__all__ = [
    "Backbone", "BUILTIN_MODELS", "LLADA_TARGETS", "infer_targets", "load_backbone", "stored_dtype", "tiny_llada",
]
