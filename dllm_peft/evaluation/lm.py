"""`DllmPeftLM`: lm-eval's model interface for masked-diffusion LLMs, with or without a dllm-peft adapter.

Importing this module registers the model as `dllm-peft` (`@register_model`). The plain `lm_eval --model dllm-peft`
imports it on demand: released lm-eval reads no plugin entry points, so the package installs a startup hook
(`registration.py`); it also declares the `lm_eval.models` entry point that lm-eval's unreleased main branch reads.

The three request types, following LLaDA's `eval_llada.py`:
- `loglikelihood`: the Monte-Carlo estimator of `diffusion.likelihood` (stratified k, `mc_num` samples, λ = k/L),
  batched across requests; `is_greedy` by greedy unmasking when `check_greedy` is on (L extra passes), else False;
- `loglikelihood_rolling`: the same estimator over lm-eval's disjoint rolling windows of the text;
- `generate_until`: `diffusion.sampler.sample` on batches of prompts; the stop strings cut the decoded response.
  `gen_length` defaults to the task's `max_gen_toks`, `block_length` and `steps` to `gen_length`.

Model arguments (`--model_args key=value,...`): pretrained, adapter, dtype, device, trust_remote_code, mc_num,
batch_size, seed, check_greedy, max_length, and every field of `SamplerConfig` (gen_length, steps, remasking, ...).
`data_dir` is accepted and ignored here: lm-eval also hands the model arguments to the tasks as metadata, which is how
the task files receive it.
"""

from __future__ import annotations

import dataclasses
import json
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
from ..config import DEFAULT_MODEL, SamplerConfig
from ..diffusion.likelihood import greedy_matches, log_likelihoods
from ..diffusion.sampler import sample
from ..errors import DllmPeftError
from ..models import Backbone, load_backbone

SAMPLER_FIELDS = tuple(field.name for field in dataclasses.fields(SamplerConfig))
DEFAULT_CONTEXT = 4096
Progress = Callable[[str, int, int], None]  # (request type, done, total)


@register_model("dllm-peft")
class DllmPeftLM(LM):
    """A masked-diffusion backbone (with an optional adapter) behind lm-eval's three request types."""

    def __init__(
        self,
        pretrained: str | None = None,
        adapter: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        mc_num: int = 128,
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
        if pretrained is None:  # the adapter knows its base model
            pretrained = read_adapter(adapter)[0].get("base_model", DEFAULT_MODEL) if adapter else DEFAULT_MODEL
        backbone = load_backbone(str(pretrained), dtype, device, trust_remote_code)
        if adapter:
            load_adapter(backbone, adapter)
        self._configure(backbone, mc_num, batch_size, seed, check_greedy, max_length, sampler_settings)
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
                      check_greedy: bool = False, max_length: int | None = None, **sampler_settings: Any) -> DllmPeftLM:
        """Wrap an already loaded backbone (the `dllm-peft eval` route: one model for the base and adapter runs)."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._configure(backbone, mc_num, batch_size, seed, check_greedy, max_length, sampler_settings)
        lm.adapter = None
        return lm

    def _configure(self, backbone, mc_num, batch_size, seed, check_greedy, max_length, sampler_settings) -> None:
        if int(mc_num) < 1:
            raise DllmPeftError(f"mc_num must be at least 1, got {mc_num}")
        backbone.model.eval()  # adapter dropout off
        self.backbone = backbone
        self.mc_num = int(mc_num)
        self.batch_size = 16 if batch_size == "auto" else int(batch_size)  # no automatic search
        self.seed = int(seed)
        self.check_greedy = bool(check_greedy)
        self.max_length = int(max_length or backbone.max_length or DEFAULT_CONTEXT)
        self.sampler_settings = {name: value for name, value in sampler_settings.items() if value is not None}
        self.on_progress: Progress | None = None

    # -- identity, for lm-eval's records and request cache --------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.backbone.name

    def get_model_info(self) -> dict[str, Any]:
        return {"model": self.backbone.name, "adapter": self.adapter, "mc_num": self.mc_num, "seed": self.seed}

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
        """The end of a prompt, cut so that it and `room` more tokens fit in the context window."""
        keep = max(0, self.max_length - room)
        return prompt_ids[-keep:] if keep else []

    def _report(self, kind: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(kind, done, total)

    # -- the three request types ----------------------------------------------------------------------------------
    def _scores(self, pairs: list[tuple[list[int], list[int]]], kind: str) -> list[float]:
        done = [0]

        def on_rows(rows: int, total: int) -> None:
            done[0] += rows
            self._report(kind, done[0], total)

        pairs = [(self._fit(prompt, len(answer)), answer) for prompt, answer in pairs]
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
            for window in get_rolling_token_windows(tokens, self.backbone.eos_id, self.max_length, 1):
                windows.append(make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self._scores(windows, "loglikelihood_rolling")):
            totals[owner] += score
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        responses: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):  # one sampler configuration per distinct gen_kwargs
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        done = 0
        for key, members in groups.items():
            gen_kwargs = json.loads(key)
            config = self._sampler_config(gen_kwargs)
            stops = gen_kwargs.get("until") or []
            stops = [stops] if isinstance(stops, str) else stops
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                prompts = [self._fit(self.backbone.encode(requests[i].args[0]), config.gen_length) for i in batch]
                # one generator per request, seeded by its position: a response does not depend on its batch
                generators = [torch.Generator(device=self.backbone.device).manual_seed(self.seed + i) for i in batch]
                result = sample(self.backbone, prompts, config, generators)
                for index, tokens in zip(batch, result.tokens):
                    responses[index] = _cut(self.backbone.decode(tokens), stops)
                done += len(batch)
                self._report("generate_until", done, len(requests))
        return responses

    def _sampler_config(self, gen_kwargs: dict[str, Any]) -> SamplerConfig:
        settings = dict(self.sampler_settings)
        settings.setdefault("gen_length", int(gen_kwargs.get("max_gen_toks", 256)))
        settings.setdefault("block_length", settings["gen_length"])
        settings.setdefault("steps", settings["gen_length"])
        return SamplerConfig(**settings)


def _cut(text: str, stops: list[str]) -> str:
    """The text up to the first stop string."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
