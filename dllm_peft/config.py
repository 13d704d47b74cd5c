"""Run configurations: frozen dataclasses whose field names are the CLI flag names.

A field's `metadata["help"]` is its `--help` text; `tests/test_cli.py` proves the flags and the fields stay in sync.
Validation lives in `__post_init__`, with messages that name the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re

from .errors import DllmPeftError


def option(default, help: str):  # noqa: A002 - mirrors typer's keyword
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_for(config_class, name: str) -> str:
    return {field.name: field.metadata.get("help", "") for field in dataclasses.fields(config_class)}[name]


DEFAULT_MODEL = "dllm-tiny"
DEFAULT_DATA = "builtin:lastdigit"


TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_GEN_LENGTH = 64  # the sampler's default canvas; --padding canvas makes training's λ grid contain its grid
DEFAULT_PADDING = "32"  # EOS tail of eval's 32-token canvas; chosen by benchmarks/results/noise_design.json
PADDING_MODES = ("canvas", "longest", "max_length")
NOISE_DRAWS = ("continuous", "grid")  # the λ routed in training: the draw t, or k / L (docs/noise-level.md)
DEFAULT_NOISE_LEVELS = "0.1,0.3,0.5,0.7,0.9"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. `recipes.resolve_train_config` layers defaults < --recipe < --config file < explicit flags."""

    method: str = option("nara", "Adapter method; NaRA is the noise-conditioned low-rank update.")
    model: str = option(DEFAULT_MODEL, "Base model: a built-in name or a local checkpoint directory.")
    data: str = option(
        DEFAULT_DATA, "Training data: a .jsonl/.json file, a datasets directory, a hub dataset name or builtin:<task>."
    )
    output: str = option("out", "Directory the adapter, checkpoints and metrics.jsonl are written to.")
    recipe: str | None = option(None, "Preset of the reference hyperparameters; explicit flags override it.")
    config: str | None = option(None, "Settings file: YAML, TOML or a run's own train_config.json (keys = flag names); flags override it.")
    max_steps: int | None = option(600, "Optimizer steps to run (with --epochs: an upper bound).")
    epochs: float | None = option(None, "Passes over the training data; sets the number of steps.")
    lr: float = option(3e-3, "Peak learning rate of AdamW (β 0.9/0.95, weight decay 0.05, linear, 5% warm-up).")
    hypernetwork_lr: float | None = option(
        None,
        "Peak learning rate of the noise-conditioned modules (NaRA's and NaRA-DoRA's hypernetwork, NaRA-C's core); "
        "default: --lr, as the authors train everything at one rate.",
    )
    batch_size: int = option(8, "Examples per micro-batch (padded with EOS).")
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step (per process).")
    rank: int = option(32, "Adapter rank r.")
    eta: float = option(0.1, "NaRA: scale η of the core's deviation from the identity.")
    dropout: float = option(0.05, "Dropout on the adapter input.")
    targets: str | None = option(None, "Comma-separated target modules (suffixes or regexes); default: the model's.")
    max_length: int = option(256, "Longest prompt + response, in tokens.")
    overlong: str = option("drop", "What to do with longer examples: drop or truncate (always reported).")
    padding: str = option(
        DEFAULT_PADDING,
        f"EOS padding of the response: N (each to a multiple of N tokens; default {DEFAULT_PADDING}, the canvas of "
        f"`dllm-peft eval` on the built-in tasks), canvas (a multiple of the sampler's default --gen-length, "
        f"{DEFAULT_GEN_LENGTH}), longest (to the batch's longest example) or max_length (the reference).",
    )
    noise_draw: str = option(
        "continuous",
        "λ routed to noise-conditioned adapters in training: continuous (the draw t ~ U(0,1], k = ⌈t·L⌉ masked, as "
        "the NaRA authors) or grid (k / L, exact; pair it with --padding canvas to cover the sampler's λ).",
    )
    chat_template: str = option("auto", "auto: put the prompt through the tokenizer's chat template if it has one; none.")
    prompt_field: str = option("prompt", "Field holding the prompt in the data records.")
    response_field: str = option("response", "Field holding the response in the data records.")
    val_data: str | None = option(
        None, "Held-out data like --data; default: the data's validation split, else --val-size examples of --data."
    )
    val_size: int = option(32, "Validation examples (0 = no validation); at most a tenth of --data is held out.")
    val_noise_levels: str = option(DEFAULT_NOISE_LEVELS, "Noise levels λ at which the validation loss is also reported.")
    eval_every: int = option(100, "Validate every N steps (and before the first and after the last; 0 = only those).")
    save_every: int = option(500, "Write a resumable checkpoint every N steps (0 = only on Ctrl-C).")
    keep_checkpoints: int = option(2, "How many of the newest checkpoints to keep.")
    resume: bool = option(False, "Continue the run in --output from its newest checkpoint.")
    overwrite: bool = option(False, "Replace the adapter or run already in --output.")
    precision: str = option("auto", "Autocast: auto (bf16, else fp16, on CUDA; fp32 on CPU), fp32, bf16 or fp16.")
    dtype: str = option("auto", "dtype of the frozen base: auto, float32, bfloat16 or float16 (adapters stay float32).")
    device: str = option("auto", "Device: auto (cuda, else mps, else cpu), cpu, cuda or mps (under `accelerate launch`: each process's GPU).")
    trust_remote_code: bool = option(False, "Allow running the model code a checkpoint ships (a security risk).")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward: less memory, about 30% slower.")
    seed: int = option(0, "Random seed (data order, masking, dropout, adapter init).")
    adapter_option: tuple[str, ...] = option(
        (), "A setting of the method's own config as KEY=VALUE, e.g. bins=4 or ranks=16,8,4 (repeatable)."
    )
    init_adapter: str | None = option(
        None, "Continue training this adapter (dllm-peft, or a stock PEFT LoRA/DoRA/HiRA folder); its settings win."
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter_option", tuple(self.adapter_option or ()))  # resume reads a JSON list
        choices = {
            "overlong": ("drop", "truncate"),
            "chat_template": ("auto", "none"),
            "precision": TRAIN_PRECISIONS,
            "noise_draw": NOISE_DRAWS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                flag = "--" + name.replace("_", "-")
                raise DllmPeftError(f"{flag} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.padding not in PADDING_MODES and not (self.padding.isdigit() and int(self.padding) >= 1):
            raise DllmPeftError(
                f"--padding must be one of {', '.join(PADDING_MODES)} or a positive number of tokens, got {self.padding!r}"
            )
        for name in ("rank", "batch_size", "grad_accum", "max_length", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise DllmPeftError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("val_size", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise DllmPeftError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        if self.max_steps is None and self.epochs is None:
            raise DllmPeftError("neither --max-steps nor --epochs is set; give one of them the length of the run")
        if self.max_steps is not None and self.max_steps < 1:
            raise DllmPeftError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.epochs is not None and not 0 < self.epochs < math.inf:
            raise DllmPeftError(f"--epochs must be a positive finite number, got {self.epochs}")
        if not 0 < self.lr < math.inf:
            raise DllmPeftError(f"--lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise DllmPeftError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if not math.isfinite(self.eta):
            raise DllmPeftError(f"--eta must be a finite number, got {self.eta}")
        if self.hypernetwork_lr is not None and not 0 < self.hypernetwork_lr < math.inf:
            raise DllmPeftError(f"--hypernetwork-lr must be a positive finite number, got {self.hypernetwork_lr}")
        if self.resume and self.overwrite:
            raise DllmPeftError("--resume continues the run in --output and --overwrite replaces it; pass only one")
        self.noise_levels  # parses, or names the bad value
        # The method and --adapter-option are checked against the adapter registry by the layer that owns it
        # (`adapters.registry.train_method_config`, called by `training.recipes.resolve_train_config`): this module is
        # a leaf that imports no torch, so that `--help` starts fast.

    @property
    def target_modules(self) -> tuple[str, ...] | None:
        if not self.targets:
            return None
        return tuple(name.strip() for name in self.targets.split(",") if name.strip())

    @property
    def canvas_length(self) -> int | None:
        """Under --padding canvas or N: each response region is EOS-padded to a multiple of this; else None."""
        if self.padding == "canvas":
            return DEFAULT_GEN_LENGTH
        return int(self.padding) if self.padding.isdigit() else None

    @property
    def noise_levels(self) -> tuple[float, ...]:
        """The fixed validation noise levels, each in (0, 1]."""
        try:
            levels = tuple(float(part) for part in self.val_noise_levels.split(",") if part.strip())
        except ValueError:
            levels = ()
        if not levels or not all(0 < level <= 1 for level in levels):
            raise DllmPeftError(
                f"--val-noise-levels {self.val_noise_levels!r} must be comma-separated numbers in (0, 1], e.g. 0.1,0.5"
            )
        return levels


REMASKING = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")
EOS_SUPPRESSION = ("none", "logits", "confidence")
SCHEDULES = ("auto", "llada", "dream")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Settings of the masked-diffusion sampler (LLaDA `generate.py` semantics, Fast-dLLM extensions)."""

    gen_length: int = option(DEFAULT_GEN_LENGTH, "Tokens to generate per prompt.")
    steps: int = option(DEFAULT_GEN_LENGTH, "Denoising steps in total (split evenly across blocks).")
    block_length: int = option(DEFAULT_GEN_LENGTH, "Block length of semi-autoregressive decoding (gen_length = one block).")
    remasking: str = option("low_confidence", "Which masked tokens to commit: low_confidence or random.")
    temperature: float = option(0.0, "Gumbel-max sampling temperature (0 = greedy).")
    cfg_scale: float = option(0.0, "Classifier-free guidance scale (0 = off).")
    threshold: float | None = option(
        None, "Fast-dLLM: commit every token whose confidence exceeds this, at least one per step (--steps unused)."
    )
    cache: str = option("none", "KV cache: none, prefix or dual (Fast-dLLM).")
    cache_refresh: int = option(
        0, "With --cache: recompute the cached K/V every N steps inside a block (0 = at block starts only)."
    )
    entropy_bound: float | None = option(
        None, "EB-sampler: commit the lowest-entropy tokens while Σ entropy − max entropy ≤ this (--steps unused)."
    )
    eos_suppression: str = option(
        "none", "none; logits (EOS/EoT are never generated); confidence (EOS/EoT are committed last in a block)."
    )
    stop_at_eos: bool = option(True, "Stop a sequence once a finished block holds EOS/EoT; the rest becomes EOS.")
    schedule: str = option(
        "auto", "Commit schedule: llada (blocks, tokens per step), dream (Dream's diffusion_generate), or auto (dream "
        "for Dream checkpoints, llada otherwise)."
    )
    alg: str = option("entropy", "With --schedule dream: origin, maskgit_plus, topk_margin or entropy (Dream's alg).")
    alg_temp: float | None = option(None, "With --schedule dream: sample the positions to commit at this temperature.")
    top_p: float | None = option(None, "With --schedule dream: nucleus filtering of the token distribution.")
    top_k: int | None = option(None, "With --schedule dream: keep the k most likely tokens.")

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise DllmPeftError(f"unknown --schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.alg not in DREAM_ALGS:
            raise DllmPeftError(f"unknown --alg {self.alg!r}; choose one of: {', '.join(DREAM_ALGS)}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise DllmPeftError(f"--top-p must lie in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise DllmPeftError(f"--top-k must be at least 1, got {self.top_k}")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise DllmPeftError(f"--alg-temp must be at least 0, got {self.alg_temp}")
        if self.gen_length < 1 or self.steps < 1 or self.block_length < 1:
            raise DllmPeftError("--gen-length, --steps and --block-length must be at least 1")
        if self.gen_length % self.block_length:
            raise DllmPeftError(
                f"--gen-length {self.gen_length} is not divisible by --block-length {self.block_length}; pass a "
                f"--block-length that divides it, or leave it out (it then equals --gen-length)"
            )
        blocks = self.gen_length // self.block_length
        if self.steps < blocks or self.steps % blocks:
            raise DllmPeftError(
                f"--steps {self.steps} must be a positive multiple of the {blocks} block(s), e.g. {self.gen_length}"
            )
        if self.remasking not in REMASKING:
            raise DllmPeftError(f"unknown --remasking {self.remasking!r}; choose {' or '.join(REMASKING)}")
        if self.cache not in CACHES:
            raise DllmPeftError(f"unknown --cache {self.cache!r}; choose one of: {', '.join(CACHES)}")
        if not 0 <= self.temperature < math.inf:
            raise DllmPeftError(f"--temperature must be a finite number of at least 0 (0 = greedy), got {self.temperature}")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise DllmPeftError(f"--cfg-scale must be a finite number of at least 0 (0 = off), got {self.cfg_scale}")
        if self.threshold is None and self.entropy_bound is None and self.steps > self.gen_length:
            raise DllmPeftError(
                f"--steps {self.steps} is more than --gen-length {self.gen_length}: every step commits at least one "
                f"token; use --steps {self.gen_length} or fewer"
            )
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise DllmPeftError(f"--threshold must lie in (0, 1], got {self.threshold}")
        if self.cache_refresh < 0:
            raise DllmPeftError(f"--cache-refresh must be at least 0, got {self.cache_refresh}")
        if self.entropy_bound is not None and not 0 < self.entropy_bound < math.inf:
            raise DllmPeftError(f"--entropy-bound must be positive, got {self.entropy_bound}")
        if self.entropy_bound is not None and self.threshold is not None:
            raise DllmPeftError("--threshold and --entropy-bound are two different samplers; pass only one of them")
        if self.eos_suppression not in EOS_SUPPRESSION:
            raise DllmPeftError(
                f"unknown --eos-suppression {self.eos_suppression!r}; choose one of: {', '.join(EOS_SUPPRESSION)}"
            )


def _check_noise_level(noise_level: float | None) -> None:
    if noise_level is not None and not 0.0 <= noise_level <= 1.0:  # also refuses nan
        raise DllmPeftError(f"--noise-level must lie in [0, 1] (the masked fraction), got {noise_level}")


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    adapter: str = option("out", "Adapter to merge: its directory or its .safetensors file.")
    model: str | None = option(None, "Base model; default: the one recorded in the adapter.")
    output: str = option("merged", "Directory the merged checkpoint (sharded safetensors, config, tokenizer) goes to.")
    noise_level: float | None = option(None, "λ in [0, 1] at which a noise-dependent adapter (NaRA) is merged.")
    dtype: str = option(
        "auto", "dtype of the written checkpoint: auto (the base's own: bfloat16 stays bfloat16), float32, bfloat16, float16."
    )
    device: str = option("auto", "Device the merge runs on: auto (cuda, else mps, else cpu), cpu, cuda or mps.")
    max_shard_size: str = option("5GB", "Largest safetensors shard of the checkpoint, e.g. 2GB or 500MB.")
    overwrite: bool = option(False, "Replace what --output already holds.")

    def __post_init__(self) -> None:
        _check_noise_level(self.noise_level)
        if not SHARD_SIZE.fullmatch(self.max_shard_size.strip()):
            raise DllmPeftError(
                f"--max-shard-size {self.max_shard_size!r} is not a size; write a whole number and a unit, e.g. 5GB, "
                "500MB or 2GiB"
            )


SHARD_SIZE = re.compile(r"[1-9][0-9]*(GB|MB|KB|GiB|MiB|KiB)", re.IGNORECASE)  # what transformers' save_pretrained reads
EXPORT_FORMATS = ("peft",)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    adapter: str = option("out", "Adapter to export: its directory or its .safetensors file.")
    format: str = option("peft", "Target format: peft (a stock PEFT LoRA, DoRA or HiRA adapter directory).")
    noise_level: float | None = option(None, "λ in [0, 1] at which a noise-dependent adapter (NaRA) is exported.")
    output: str = option("peft-adapter", "Directory the exported adapter goes to.")
    overwrite: bool = option(False, "Replace what --output already holds.")

    def __post_init__(self) -> None:
        _check_noise_level(self.noise_level)
        if self.format not in EXPORT_FORMATS:
            raise DllmPeftError(f"unknown --format {self.format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")


MAX_LEVELS = 1001  # a step of 0.001 in λ; each level costs an SVD per module


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    adapter: str = option("out", "Adapter to inspect: its directory or its .safetensors file alone.")
    levels: int = option(11, "Number of noise levels λ on an even grid from 0 to 1.")
    model: str | None = option(
        None, "Base model to load: adds its parameter count; needed by methods whose update reads the base weights."
    )
    plot: str | None = option(None, "Write a PNG here: norms vs λ per module type and a layer × λ heat map.")
    json: bool = option(False, "Print the report as JSON instead of tables.")

    def __post_init__(self) -> None:
        if not 2 <= self.levels <= MAX_LEVELS:
            raise DllmPeftError(
                f"--levels must lie in [2, {MAX_LEVELS}] (the grid runs from λ = 0 to 1), got {self.levels}"
            )
        if self.plot is not None and not self.plot.lower().endswith(".png"):
            raise DllmPeftError(f"--plot {self.plot!r} must name a .png file")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """What `dllm-peft sample` runs on and writes; the sampler's own settings are a `SamplerConfig`."""

    model: str | None = option(
        None, "Base model: a built-in name or a checkpoint; default: the adapter's base model, else dllm-tiny."
    )
    adapter: str | None = option(None, "Adapter to sample with: its directory or its .safetensors file.")
    prompt: str | None = option(None, "The prompt to answer (or use --prompts-file).")
    prompts_file: str | None = option(
        None, "Prompts to answer: a .jsonl/.json file of records with a 'prompt' field, or text with one per line."
    )
    output: str | None = option(None, "Write one JSON line per prompt here (text, steps, tokens/s) instead of printing.")
    seed: int = option(0, "Random seed; prompt i uses seed + i, so its output does not depend on --batch-size.")
    batch_size: int = option(8, "Prompts decoded together.")
    chat_template: str = option(
        "auto", "auto: put each prompt through the tokenizer's chat template if it has one (as training does); none."
    )
    dtype: str = option("auto", "dtype the model runs in: auto, float32, bfloat16 or float16.")
    device: str = option("auto", "Device the model runs on: auto (cuda, else mps, else cpu), cpu, cuda or mps.")

    def __post_init__(self) -> None:
        if self.chat_template not in ("auto", "none"):
            raise DllmPeftError(f"--chat-template must be auto or none, got {self.chat_template!r}")
        if (self.prompt is None) == (self.prompts_file is None):
            raise DllmPeftError("pass exactly one of --prompt TEXT or --prompts-file FILE")
        if self.batch_size < 1:
            raise DllmPeftError(f"--batch-size must be at least 1, got {self.batch_size}")


EVAL_PROTOCOLS = ("generative", "mc")
MC_ESTIMATORS = ("reference", "adaptive")
# sampler presets of `dllm-peft eval --sampler-preset`; flags typed beside a preset win. `fast` is what
# benchmarks/sampler measures for Fast-dLLM: threshold decoding + dual KV cache (refreshed at block starts)
SAMPLER_PRESETS = {"exact": {}, "fast": {"threshold": 0.9, "cache": "dual"}}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `dllm-peft eval` measures; `sampler` holds the sampler flags that were set (`SamplerConfig` fields)."""

    model: str | None = option(
        None, "Base model: a built-in name or a checkpoint; default: the adapter's base model, else dllm-tiny."
    )
    adapter: str | None = option(None, "Adapter to evaluate: its directory or its .safetensors file.")
    tasks: str = option(
        DEFAULT_DATA.removeprefix("builtin:"),
        "Comma-separated tasks or suites: commonsense, math, code, arc, a task name, or a built-in task.",
    )
    data_dir: str | None = option(
        None, "Local task files: the LLM-Adapters repository or its dataset/ folder (+ gsm8k, HumanEval, mbpp files)."
    )
    limit: int | None = option(None, "Evaluate only the first N documents of each task (quick runs).")
    num_fewshot: int = option(0, "Few-shot examples in each prompt.")
    protocol: str = option(
        "generative", "Commonsense tasks: generative (LLM-Adapters, as the NaRA paper) or mc (lm-eval log-likelihood)."
    )
    output: str | None = option(None, "Write the results JSON here, and the Markdown table beside it (.md).")
    log_samples: bool = option(
        False, "With --output: also write every document's prompt, target, response and score, one JSON line each."
    )
    allow_code_execution: bool = option(False, "Run generated code (code tasks) in the sandbox; off by default.")
    compare_base: bool = option(True, "With --adapter: also evaluate the base model, in the same run and table.")
    mc_num: int = option(128, "Monte-Carlo samples per log-likelihood (multiple-choice protocol); the most with adaptive.")
    mc_estimator: str = option(
        "reference", "reference (LLaDA's estimator, mc_num samples per option) or adaptive (shared antithetic samples, "
        "exact short answers, stops once the answer is decided)."
    )
    mc_stop_se: float = option(1.25, "With --mc-estimator adaptive: stop once the leading option is ahead of each "
                                     "other by this many standard errors (Student's t for the pairs drawn).")
    mc_futility_se: float = option(0.0, "With --mc-estimator adaptive: also stop a near tie, whose leader would be "
                                        "ahead by fewer standard errors than this at --mc-num samples; 0: never.")
    batch_size: int = option(16, "Sequences per forward pass (log-likelihood samples, or prompts being generated).")
    chat_template: str = option("auto", "auto: put prompts through the tokenizer's chat template if it has one; none.")
    seed: int = option(0, "Random seed (Monte-Carlo masks, sampling, few-shot choice).")
    dtype: str = option("auto", "dtype the model runs in: auto, float32, bfloat16 or float16.")
    device: str = option("auto", "Device the model runs on: auto (cuda, else mps, else cpu), cpu, cuda or mps.")
    trust_remote_code: bool = option(False, "Allow running the model code a checkpoint ships (a security risk).")
    sampler_preset: str = option("exact", "exact (the sampler flags as given) or fast (threshold 0.9 + dual KV cache, "
                                          "Fast-dLLM); sampler flags you type win.")
    sampler: dict = option({}, "Sampler settings that were set (SamplerConfig fields); unset lengths follow the task.")

    def __post_init__(self) -> None:
        if self.protocol not in EVAL_PROTOCOLS:
            raise DllmPeftError(f"--protocol must be generative or mc, got {self.protocol!r}")
        if self.mc_estimator not in MC_ESTIMATORS:
            raise DllmPeftError(f"--mc-estimator must be reference or adaptive, got {self.mc_estimator!r}")
        if not self.mc_stop_se > 0:
            raise DllmPeftError(f"--mc-stop-se must be above 0, got {self.mc_stop_se}")
        if not self.mc_futility_se >= 0:
            raise DllmPeftError(f"--mc-futility-se must be 0 or above, got {self.mc_futility_se}")
        if self.sampler_preset not in SAMPLER_PRESETS:
            raise DllmPeftError(f"--sampler-preset must be exact or fast, got {self.sampler_preset!r}")
        if self.chat_template not in ("auto", "none"):
            raise DllmPeftError(f"--chat-template must be auto or none, got {self.chat_template!r}")
        for name in ("mc_num", "batch_size"):
            if getattr(self, name) < 1:
                raise DllmPeftError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise DllmPeftError(f"--limit must be at least 1, got {self.limit}")
        if self.num_fewshot < 0:
            raise DllmPeftError(f"--num-fewshot must be at least 0, got {self.num_fewshot}")
        known = {field.name for field in dataclasses.fields(SamplerConfig)}
        unknown = sorted(set(self.sampler) - known)
        if unknown:
            raise DllmPeftError(f"unknown sampler setting {unknown[0]!r}; choose from: {', '.join(sorted(known))}")
        settings = self.sampler_settings()
        length = settings.get("gen_length") or self.sampler.get("block_length") or SamplerConfig().gen_length
        SamplerConfig(**{"gen_length": length, "block_length": length, "steps": length, **settings})

    def sampler_settings(self) -> dict:
        """The preset's settings overlaid with the sampler flags that were typed."""
        return {**SAMPLER_PRESETS[self.sampler_preset], **self.sampler}
