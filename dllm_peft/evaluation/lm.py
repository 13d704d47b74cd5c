"""`DllmPeftLM`: lm-eval's model interface for masked-diffusion LLMs, with or without a dllm-peft adapter.

Importing this module registers the model as `dllm-peft` (`@register_model`). The plain `lm_eval --model dllm-peft`
imports it on demand: released lm-eval reads no plugin entry points, so the package installs a startup hook
(`registration.py`); it also declares the `lm_eval.models` entry point that lm-eval's unreleased main branch reads.

The three request types, following LLaDA's `eval_llada.py`:
- `loglikelihood`: the Monte-Carlo estimator of `diffusion.likelihood` (stratified k, `mc_num` samples, λ = k/L),
  batched across requests; with `mc_estimator=adaptive` the requests that share a context (a question's options)
  are scored together by `adaptive_estimates` (shared antithetic samples, exact short answers, early stopping); `is_greedy` by greedy unmasking when `check_greedy` is on (L extra passes), else False;
- `loglikelihood_rolling`: the same estimator over lm-eval's disjoint rolling windows of the text;
- `generate_until`: `diffusion.sampler.sample` on batches of prompts; the stop strings cut the decoded response.
  `gen_length` defaults to the task's `max_gen_toks`, `block_length` and `steps` to `gen_length`.

Fitting the context window (`max_length`, the model's context): a prompt keeps its last tokens (few-shot examples
go before the question does). When the task's `max_gen_toks` leaves a prompt less than half the window, the
generation of that prompt is capped so that the prompt keeps `min(its length, half the window)` tokens, rounded
down to whole `block_length` blocks if one was set (else to a multiple of 32 tokens, so that prompts of similar
lengths share batches), with `steps` scaled alike; one notice per task group says so.
A `gen_length` the user set is never changed: if it leaves no room for a prompt, the run is refused.

Data parallel: under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) the model joins the process group (gloo on
a CPU, NCCL on GPUs, one GPU per local rank) and reports `rank`/`world_size`, so lm-eval hands each process its share
of the documents and gathers the results on rank 0. Every request draws its randomness from a generator seeded by
the seed and its own tokens, so a score does not depend on the split.

Progress: `on_progress(kind, done, total)` if set (the `dllm-peft eval` command), else `progress.PlainProgress` on
rank 0 (a tqdm bar on a terminal, plain lines with the remaining time in a log).

Model arguments (`--model_args key=value,...`): pretrained, adapter (or `peft`, the `hf` model's name), dtype, device,
trust_remote_code, mc_num, mc_estimator (reference | adaptive), mc_stop_se, mc_futility_se, batch_size, seed,
check_greedy, max_length, sampler_preset (exact | fast; or `sampler`) and every field of `SamplerConfig` (gen_length,
steps, ...).
`data_dir` is accepted and ignored here: lm-eval also hands the model arguments to the tasks as metadata, which is how
the task files receive it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import (
    get_rolling_token_windows,
    make_disjoint_window,
    simple_parse_args_string,
)

from ..adapters.files import load_adapter, read_adapter
from ..config import DEFAULT_MODEL, MC_ESTIMATORS, SAMPLER_PRESETS, SamplerConfig
from ..diffusion.adaptive_likelihood import FUTILITY_SE, STOP_SE, adaptive_estimates
from ..diffusion.likelihood import greedy_matches, log_likelihoods
from ..diffusion.sampler import sample
from ..errors import DllmPeftError
from ..models import Backbone, load_backbone
from .progress import PlainProgress

SAMPLER_FIELDS = tuple(field.name for field in dataclasses.fields(SamplerConfig))
DEFAULT_CONTEXT = 4096
MIN_PROMPT_SHARE = 2  # a capped generation leaves a prompt up to 1/2 of the context window
GEN_QUANTUM = 32  # capped lengths are whole multiples of this, so prompts of similar lengths share batches
Progress = Callable[[str, int, int], None]  # (request type, done, total)
logger = logging.getLogger(__name__)


@register_model("dllm-peft")
class DllmPeftLM(LM):
    """A masked-diffusion backbone (with an optional adapter) behind lm-eval's three request types."""

    def __init__(
        self,
        pretrained: str | None = None,
        adapter: str | None = None,
        peft: str | None = None,  # lm-eval's `hf` model calls the adapter so
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        mc_num: int = 128,
        mc_estimator: str = "reference",
        mc_stop_se: float = STOP_SE,
        mc_futility_se: float = FUTILITY_SE,
        sampler_preset: str = "exact",
        sampler: str | None = None,  # another name for sampler_preset, as `dllm-peft eval --sampler fast`
        batch_size: int | str = 16,
        seed: int = 0,
        check_greedy: bool = False,
        max_length: int | None = None,
        data_dir: str | None = None,  # for the task files: lm-eval also passes model arguments as task metadata
        max_batch_size: int | None = None,  # lm-eval's automatic batch-size search: not used
        **sampler_settings: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(sampler_settings) - set(SAMPLER_FIELDS))
        if unknown:
            raise DllmPeftError(f"unknown model argument {unknown[0]!r}; dllm-peft takes pretrained, adapter, mc_num, "
                                f"batch_size, seed and the sampler settings {', '.join(SAMPLER_FIELDS)}")
        if peft and adapter and peft != adapter:
            raise DllmPeftError(f"peft={peft} and adapter={adapter} name two adapters; pass one of them")
        adapter = adapter or peft
        if pretrained is None:  # the adapter knows its base model
            pretrained = base_model_of(adapter)
        _check_batch_size(batch_size)
        if sampler is not None and sampler_preset not in ("exact", sampler):
            raise DllmPeftError(f"sampler={sampler} and sampler_preset={sampler_preset} disagree; pass one of them")
        sampler_preset = sampler or sampler_preset
        if sampler_preset not in SAMPLER_PRESETS:
            raise DllmPeftError(f"sampler_preset must be exact or fast, got {sampler_preset!r}")
        sampler_settings = {**SAMPLER_PRESETS[sampler_preset], **sampler_settings}
        device = join_process_group(device)
        backbone = load_backbone(str(pretrained), dtype, device, trust_remote_code)
        if adapter:
            load_adapter(backbone, adapter)
        self._configure(backbone, mc_num, batch_size, seed, check_greedy, max_length, sampler_settings)
        self._estimator(mc_estimator, mc_stop_se, mc_futility_se)
        self.adapter = adapter

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> DllmPeftLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> DllmPeftLM:
        """Model arguments win; lm-eval's own flags (`--batch_size`, `--device`) fill only what they leave open."""
        extra = {key: value for key, value in (additional_config or {}).items()
                 if value is not None and key not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def from_backbone(cls, backbone: Backbone, mc_num: int = 128, batch_size: int = 16, seed: int = 0,
                      check_greedy: bool = False, max_length: int | None = None, mc_estimator: str = "reference",
                      mc_stop_se: float = STOP_SE, mc_futility_se: float = FUTILITY_SE,
                      **sampler_settings: Any) -> DllmPeftLM:
        """Wrap an already loaded backbone (the `dllm-peft eval` route: one model for the base and adapter runs)."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._configure(backbone, mc_num, batch_size, seed, check_greedy, max_length, sampler_settings)
        lm._estimator(mc_estimator, mc_stop_se, mc_futility_se)
        lm.adapter = None
        return lm

    def _configure(self, backbone, mc_num, batch_size, seed, check_greedy, max_length, sampler_settings) -> None:
        if int(mc_num) < 1:
            raise DllmPeftError(f"mc_num must be at least 1, got {mc_num}")
        _check_batch_size(batch_size)
        backbone.model.eval()  # adapter dropout off
        self.backbone = backbone
        self.mc_num = int(mc_num)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.check_greedy = bool(check_greedy)
        self.max_length = int(max_length or backbone.max_length or DEFAULT_CONTEXT)
        self.sampler_settings = {name: value for name, value in sampler_settings.items() if value is not None}
        self.on_progress: Progress | None = None
        self.on_notice: Callable[[str], None] = logger.warning
        self._noticed: set[str] = set()
        self._device = backbone.device
        self._rank, self._world_size = _process_group()
        self._default_progress: PlainProgress | None = None

    def _estimator(self, mc_estimator: str, mc_stop_se: float | str, mc_futility_se: float | str) -> None:
        if mc_estimator not in MC_ESTIMATORS:
            raise DllmPeftError(f"mc_estimator must be reference or adaptive, got {mc_estimator!r}")
        if not float(mc_stop_se) > 0:
            raise DllmPeftError(f"mc_stop_se must be above 0, got {mc_stop_se}")
        if not float(mc_futility_se) >= 0:
            raise DllmPeftError(f"mc_futility_se must be 0 or above, got {mc_futility_se}")
        self.mc_estimator, self.mc_stop_se, self.mc_futility_se = mc_estimator, float(mc_stop_se), float(mc_futility_se)

    # -- data parallel: lm-eval's collective hooks (no-ops in one process) ------------------------------------------
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)  # (world_size,) for a scalar

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # -- identity, for lm-eval's records and request cache --------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.backbone.name

    def get_model_info(self) -> dict[str, Any]:
        return {"model": self.backbone.name, "adapter": self.adapter, "mc_num": self.mc_num,
                "mc_estimator": self.mc_estimator, "seed": self.seed}

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.backbone.tokenizer, "chat_template", None):
            raise DllmPeftError(f"model {self.backbone.name!r} has no chat template; drop --apply_chat_template")
        return self.backbone.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # -- tokens ---------------------------------------------------------------------------------------------------
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids; trailing spaces of the context move to the continuation (lm-eval's rule)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.backbone.encode(context + continuation)
        context_ids = self.backbone.encode(context)
        return context_ids, whole[len(context_ids) :]

    def _fit(self, prompt_ids: list[int], room: int) -> list[int]:
        """The end of a prompt (the question; few-shot examples go first), cut so it and `room` more tokens fit."""
        keep = self.max_length - room
        if keep < 1:
            raise DllmPeftError(
                f"{room} answer tokens leave no room for a prompt in the model's context of {self.max_length} "
                "tokens; lower --gen-length (or use a model with a longer context)"
            )
        return prompt_ids[-keep:]

    def _report(self, kind: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(kind, done, total)
        elif self._rank == 0:  # plain lm_eval: a tqdm bar or log lines on stderr, from one process only
            if self._default_progress is None:
                self._default_progress = PlainProgress()
            self._default_progress(kind, done, total)

    def _notice(self, text: str) -> None:
        if text not in self._noticed and self._rank == 0:
            self._noticed.add(text)
            self.on_notice(text)

    # -- the three request types ----------------------------------------------------------------------------------
    def _scores(self, pairs: list[tuple[list[int], list[int]]], kind: str) -> list[float]:
        done = [0]

        def on_rows(rows: int, total: int) -> None:
            done[0] += rows
            self._report(kind, done[0], total)

        pairs = [(self._fit(prompt, len(answer)), answer) for prompt, answer in pairs]
        self._report(kind, 0, len(pairs))  # starts the clock of the time-remaining estimate
        if self.mc_estimator == "adaptive":  # progress in requests: the rows a question takes are not known ahead
            estimates = adaptive_estimates(
                self.backbone, pairs, self.mc_num, self.batch_size, self.seed, self.mc_stop_se,
                on_requests=lambda done, total: self._report(kind, done, total), futility_se=self.mc_futility_se)
            return [estimate.value for estimate in estimates]
        return log_likelihoods(self.backbone, pairs, self.mc_num, self.batch_size, self.seed, on_rows)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*request.args) for request in requests]
        scores = self._scores(pairs, "loglikelihood")
        if not self.check_greedy:
            return [(score, False) for score in scores]
        greedy = [greedy_matches(self.backbone, self._fit(p, len(a)), a) for p, a in pairs]
        return list(zip(scores, greedy))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, request in enumerate(requests):
            tokens = self.backbone.encode(request.args[0])
            # windows of max_length - 1 predicted tokens: with their one context token they fill the window
            for window in get_rolling_token_windows(tokens, self.backbone.eos_id, self.max_length - 1, 1):
                windows.append(make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self._scores(windows, "loglikelihood_rolling")):
            totals[owner] += score
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        responses: list[str | None] = [None] * len(requests)
        groups: dict[tuple[str, SamplerConfig], list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):  # one sampler configuration per batch
            gen_kwargs = request.args[1]
            prompt_ids = self.backbone.encode(request.args[0])
            config = self._fitted_config(gen_kwargs, len(prompt_ids))
            stops = gen_kwargs.get("until") or []
            key = (json.dumps([stops] if isinstance(stops, str) else stops), config)
            groups.setdefault(key, []).append((index, self._fit(prompt_ids, config.gen_length)))
        done = 0
        self._report("generate_until", 0, len(requests))  # starts the clock of the time-remaining estimate
        for (stops_json, config), members in groups.items():
            stops = json.loads(stops_json)
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                prompts = [prompt for _, prompt in batch]
                # one generator per request, seeded by its tokens: a response depends on neither batch nor split
                generators = [self._generator(prompt) for prompt in prompts]
                result = sample(self.backbone, prompts, config, generators)
                for (index, _), tokens in zip(batch, result.tokens):
                    responses[index] = _cut(self.backbone.decode(tokens), stops)
                done += len(batch)
                self._report("generate_until", done, len(requests))
        return responses

    def _generator(self, prompt_ids: list[int]) -> torch.Generator:
        digest = hashlib.blake2b(repr((self.seed, prompt_ids)).encode(), digest_size=8).digest()
        seed = int.from_bytes(digest, "little") & (2**63 - 1)
        return torch.Generator(device=self.backbone.device).manual_seed(seed)

    def _sampler_config(self, gen_kwargs: dict[str, Any]) -> SamplerConfig:
        settings = dict(self.sampler_settings)
        settings.setdefault("gen_length", int(gen_kwargs.get("max_gen_toks", 256)))
        settings.setdefault("block_length", settings["gen_length"])
        settings.setdefault("steps", settings["gen_length"])
        return SamplerConfig(**settings)

    def _fitted_config(self, gen_kwargs: dict[str, Any], prompt_length: int) -> SamplerConfig:
        """The sampler settings for one prompt, the generation capped to leave the prompt its share of the window."""
        config = self._sampler_config(gen_kwargs)
        context = self.max_length
        if "gen_length" in self.sampler_settings:  # the user's length: refused, never changed
            if config.gen_length >= context:
                raise DllmPeftError(
                    f"--gen-length {config.gen_length} leaves no room for a prompt in the model's context of "
                    f"{context} tokens; pass a --gen-length below {context}"
                )
            return config
        room = context - min(prompt_length, context // MIN_PROMPT_SHARE)  # tokens the generation may take
        if config.gen_length <= room:
            return config
        blocks = config.gen_length // config.block_length
        user_block = "block_length" in self.sampler_settings
        quantum = config.block_length if user_block else min(GEN_QUANTUM, room)
        gen_length = (room // quantum) * quantum
        if gen_length < 1:
            raise DllmPeftError(
                f"--block-length {config.block_length} does not fit the model's context of {context} tokens beside "
                f"a prompt; pass a --block-length of at most {room}"
            )
        block_length = config.block_length if user_block else gen_length
        new_blocks = gen_length // block_length
        steps = max(new_blocks, round(config.steps * gen_length / config.gen_length / new_blocks) * new_blocks)
        self._notice(
            f"the task asks for {blocks * config.block_length} new tokens but the model's context is {context} "
            f"tokens: generation is capped so that a prompt keeps up to {context // MIN_PROMPT_SHARE} tokens "
            f"(pass --gen-length to choose)"
        )
        return dataclasses.replace(config, gen_length=gen_length, block_length=block_length, steps=steps)


def base_model_of(adapter: str | None) -> str:
    """The base model an adapter was trained on (its saved record), else the default model."""
    return read_adapter(adapter)[0].get("base_model", DEFAULT_MODEL) if adapter else DEFAULT_MODEL


def _check_batch_size(batch_size: int | str) -> None:
    if str(batch_size).startswith("auto"):
        raise DllmPeftError(
            f"batch_size={batch_size} is not supported by dllm-peft (it has no automatic search); pass a number, "
            "e.g. batch_size=16 (rows per forward pass)"
        )
    if int(batch_size) < 1:
        raise DllmPeftError(f"batch_size must be at least 1, got {batch_size}")


def join_process_group(device: str) -> str:
    """Under `accelerate launch`/`torchrun` (WORLD_SIZE > 1): join the process group; return this process's device.

    gloo on a CPU, NCCL on GPUs; `auto`/`cuda` then mean this process's GPU, `cuda:<LOCAL_RANK>`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch.distributed as dist

    gpus = torch.cuda.is_available() and device in ("auto", "cuda")
    if gpus:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if gpus else "gloo")
    return device


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cut(text: str, stops: list[str]) -> str:
    """The text up to the first stop string."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
