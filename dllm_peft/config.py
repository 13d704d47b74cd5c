"""Run configurations: frozen dataclasses whose field names are the CLI flag names.

A field's `metadata["help"]` is its `--help` text; `tests/test_cli.py` proves the flags and the fields stay in sync.
Validation lives in `__post_init__`, with messages that name the bad value and the fix.
"""

from __future__ import annotations

import dataclasses

from .errors import DllmPeftError
from .registry import get_method


def option(default, help: str):  # noqa: A002 - mirrors typer's keyword
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_for(config_class, name: str) -> str:
    return {field.name: field.metadata.get("help", "") for field in dataclasses.fields(config_class)}[name]


DEFAULT_MODEL = "tiny-llada"
DEFAULT_DATA = "builtin:uppercase"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: str = option("nara", "Adapter method (see `dllm-peft train --help` for the list).")
    model: str = option(DEFAULT_MODEL, "Base model: a built-in name or a local checkpoint directory.")
    data: str = option(DEFAULT_DATA, "Training data: a .jsonl/.json file or builtin:<task>.")
    output: str = option("out", "Directory the adapter is written to.")
    max_steps: int = option(200, "Optimizer steps to run.")
    rank: int = option(32, "Adapter rank r.")
    eta: float = option(0.1, "NaRA: scale η of the core's deviation from the identity.")
    dropout: float = option(0.05, "Dropout on the adapter input.")
    targets: str | None = option(None, "Comma-separated target modules (suffixes or regexes); default: the model's.")
    lr: float = option(1e-3, "Peak learning rate of AdamW (linear schedule, 5% warm-up).")
    batch_size: int = option(8, "Examples per micro-batch.")
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step.")
    max_length: int = option(256, "Longest prompt + response, in tokens.")
    overlong: str = option("drop", "What to do with longer examples: drop or truncate (always reported).")
    prompt_field: str = option("prompt", "Field holding the prompt in the data records.")
    response_field: str = option("response", "Field holding the response in the data records.")
    seed: int = option(0, "Random seed (data order, masking, adapter init).")
    overwrite: bool = option(False, "Replace an adapter already in --output.")

    def __post_init__(self) -> None:
        get_method(self.method)  # an unknown name fails here, listing the known ones
        if self.overlong not in ("drop", "truncate"):
            raise DllmPeftError(f"--overlong must be drop or truncate, got {self.overlong!r}")
        for name in ("max_steps", "rank", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise DllmPeftError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise DllmPeftError(f"--lr must be positive, got {self.lr}")

    @property
    def target_modules(self) -> tuple[str, ...] | None:
        if not self.targets:
            return None
        return tuple(name.strip() for name in self.targets.split(",") if name.strip())


REMASKING = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Settings of the masked-diffusion sampler (LLaDA `generate.py` semantics, Fast-dLLM extensions)."""

    gen_length: int = option(64, "Tokens to generate per prompt.")
    steps: int = option(64, "Denoising steps in total (split evenly across blocks).")
    block_length: int = option(64, "Block length of semi-autoregressive decoding (gen_length = one block).")
    remasking: str = option("low_confidence", "Which masked tokens to commit: low_confidence or random.")
    temperature: float = option(0.0, "Gumbel-max sampling temperature (0 = greedy).")
    cfg_scale: float = option(0.0, "Classifier-free guidance scale (0 = off).")
    threshold: float | None = option(None, "Fast-dLLM: commit every token whose confidence exceeds this.")
    cache: str = option("none", "KV cache: none, prefix or dual (Fast-dLLM).")

    def __post_init__(self) -> None:
        if self.gen_length < 1 or self.steps < 1 or self.block_length < 1:
            raise DllmPeftError("--gen-length, --steps and --block-length must be at least 1")
        if self.gen_length % self.block_length:
            raise DllmPeftError(
                f"--gen-length {self.gen_length} is not divisible by --block-length {self.block_length}"
            )
        blocks = self.gen_length // self.block_length
        if self.steps < blocks or self.steps % blocks:
            raise DllmPeftError(f"--steps {self.steps} must be a positive multiple of the {blocks} block(s)")
        if self.remasking not in REMASKING:
            raise DllmPeftError(f"unknown --remasking {self.remasking!r}; choose {' or '.join(REMASKING)}")
        if self.cache not in CACHES:
            raise DllmPeftError(f"unknown --cache {self.cache!r}; choose one of: {', '.join(CACHES)}")
        if self.temperature < 0:
            raise DllmPeftError(f"--temperature must be at least 0, got {self.temperature}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise DllmPeftError(f"--threshold must lie in (0, 1], got {self.threshold}")
