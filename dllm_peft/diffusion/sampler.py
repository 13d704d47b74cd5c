"""The masked-diffusion sampler: LLaDA's `generate.py` semantics, plus Fast-dLLM and the EB-sampler.

    sample(backbone, prompts, config, generator=None, on_step=None) -> SampleResult

It follows LLaDA's reference sampler (Nie et al. 2025, `generate.py`) step for step: the canvas is the prompt plus
`gen_length` mask tokens, decoded in blocks of `block_length` from left to right with `steps / blocks` steps each.
A step predicts every masked position of the current block (Gumbel-max at `temperature`, in float64; classifier-free
guidance `un + (s + 1)·(cond − un)` with the prompt masked in the unconditional pass), scores the predictions
(`low_confidence`: softmax probability of the chosen token; `random`: uniform) and commits some of them
(`unmasking.py`: LLaDA's fixed schedule, Fast-dLLM's threshold, or the EB-sampler's entropy bound). Forward passes
may reuse cached K/V (`kv_cache.py`). Where the reference has sharp edges, we differ on purpose:

* prompts of different lengths are left-padded with an attention mask (LLaDA's batching) *and* RoPE positions that
  count from each prompt's first real token, so a prompt's output does not depend on its batch;
* each prompt may have its own random generator; its noise covers only the current block (the only positions a
  step can commit), so a prompt's output under a fixed seed does not depend on its batch either;
* the mask token is never a prediction (its logit is −∞): committing it would leave the position masked;
* mask, EOS and EoT ids come from the backbone and its tokenizer; the CFG branch is tested;
* λ, the noise level routed to noise-aware adapters (NaRA), is per sequence and per step the fraction of that
  sequence's response region (future blocks included) still masked — one definition with training;
* `stop_at_eos`: a sequence stops after a finished block holds EOS/EoT and the rest of its response becomes EOS.
  Committed tokens never change, so its tokens before the first EOS are the ones the full run would give.

`--schedule dream` (the default for Dream checkpoints) runs Dream's own `diffusion_generate` instead
(`dream_sampler.py`), one prompt at a time; its result has the same form.

Randomness, per sequence and step (the test's reference loop draws the same): with `temperature > 0`, uniform noise
of shape (block_length, V) in float64 for the Gumbel-max; then with `remasking = random`, (block_length,) uniforms.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from ..config import SamplerConfig
from ..errors import DllmPeftError
from ..models.backbone import Backbone
from .dream_sampler import dream_generate
from .kv_cache import BlockDenoiser
from .unmasking import (
    entropy_bounded_positions,
    threshold_positions,
    top_k_positions,
    transfer_schedule,
)

EOT_TOKEN = "<|eot_id|>"  # LLaDA-Instruct's end-of-turn token, looked up by name in the tokenizer's vocabulary
DEMOTION = 2.0  # confidences lie in [0, 1]; subtracting 2 orders demoted tokens after all others, keeping them finite


@dataclasses.dataclass(frozen=True)
class SampleResult:
    tokens: list[list[int]]  # per prompt: the generated response ids, cut before the first EOS
    canvas: torch.Tensor  # (B, T) the final canvas (prompts left-padded), for inspection and tests
    steps: list[int]  # per prompt: denoising steps actually run
    prompt_length: int = 0  # T - gen_length: where the response region of the canvas starts
    seconds: list[float] = dataclasses.field(default_factory=list)  # per prompt: wall time until it finished
    decoded: list[int] = dataclasses.field(default_factory=list)  # per prompt: response positions the model filled
    forward_passes: int = 0  # model calls in total (a CFG pair runs as one batch and counts once)


def sample(
    backbone: Backbone,
    prompts: list[list[int]],
    config: SamplerConfig,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    on_step: Callable[[torch.Tensor, int], None] | None = None,
) -> SampleResult:
    """Generate a response for each tokenised prompt.

    Args:
        prompts: B lists of token ids, each non-empty and free of the mask token.
        generator: one generator shared by all prompts (drawn from in prompt order), one per prompt (then each
            prompt's output is independent of the batch), or None for torch's default generator.
        on_step: called after every step with the canvas (B, T) and the number of steps run so far.
    Returns:
        A `SampleResult`; `canvas` is (B, P + gen_length) with the prompts left-padded to the longest, P.
    """
    check_prompts(backbone, prompts, config)
    if uses_dream_schedule(backbone, config):
        return _dream_sample(backbone, prompts, config, _per_prompt_generators(generator, len(prompts)), on_step)
    started = time.perf_counter()
    device, mask_id = backbone.device, backbone.mask_id
    count, gen_length, block_length = len(prompts), config.gen_length, config.block_length
    generators = _per_prompt_generators(generator, count)
    canvas, attention_mask, position_ids = (t.to(device) for t in _initial_canvas(prompts, gen_length, backbone))
    prompt_length = canvas.shape[1] - gen_length
    prompt_mask = attention_mask.bool()
    prompt_mask[:, prompt_length:] = False  # (B, T) real prompt tokens: masked in CFG's unconditional pass
    copies = 2 if config.cfg_scale > 0 else 1  # CFG runs rows B..2B-1 as the unconditional copies
    denoiser = BlockDenoiser(
        backbone, attention_mask.repeat(copies, 1), position_ids.repeat(copies, 1), config.cache, config.cache_refresh
    )
    stop_ids = torch.tensor(stop_token_ids(backbone), device=device)
    adaptive = config.threshold is not None or config.entropy_bound is not None
    steps_per_block = config.steps // (gen_length // block_length)
    schedule = transfer_schedule(block_length, steps_per_block)

    finished = torch.zeros(count, dtype=torch.bool, device=device)
    steps_run = torch.zeros(count, dtype=torch.long, device=device)
    seconds, decoded = [0.0] * count, [gen_length] * count
    total_steps = 0
    with torch.inference_mode():
        for start in range(prompt_length, prompt_length + gen_length, block_length):
            end = start + block_length
            denoiser.start_block()
            # Adaptive rules commit at least one token per step, so a block takes at most block_length steps.
            for step_in_block in range(block_length if adaptive else steps_per_block):
                active = ~finished
                if adaptive:  # a row whose block is complete waits for the others
                    active &= (canvas[:, start:end] == mask_id).any(dim=1)
                if not active.any():
                    break
                rows = active.nonzero().squeeze(1)  # (A,) ascending
                selected = slice(None) if len(rows) == count else rows  # every row runs: views, not copies
                level = (canvas[selected, prompt_length:] == mask_id).float().mean(dim=1)  # (A,) λ
                model_input = canvas[selected]  # (A, T)
                if copies == 2:
                    unconditional = model_input.masked_fill(prompt_mask[selected], mask_id)
                    model_input = torch.cat([model_input, unconditional])  # (2A, T)
                logits = denoiser(model_input, torch.cat([rows + copy * count for copy in range(copies)]),
                                  start, end, level.repeat(copies)).float()  # (copies·A, L, V)
                if copies == 2:
                    conditional, unconditional = logits.chunk(2)
                    logits = unconditional + (config.cfg_scale + 1) * (conditional - unconditional)  # (A, L, V)
                canvas[selected, start:end] = _step(
                    canvas[selected, start:end], logits, [generators[row] for row in rows.tolist()], config,
                    mask_id, stop_ids, 0 if adaptive else schedule[step_in_block],
                )
                steps_run += active
                total_steps += 1
                if on_step is not None:
                    on_step(canvas, total_steps)
            now = time.perf_counter() - started
            for row in (~finished).nonzero().squeeze(1).tolist():
                seconds[row] = now
                if config.stop_at_eos and torch.isin(canvas[row, prompt_length:end], stop_ids).any():
                    finished[row] = True
                    canvas[row, end:] = backbone.eos_id
                    decoded[row] = end - prompt_length
            if finished.all():
                break

    stop_set = set(stop_ids.tolist())
    tokens = [_cut_at_stop(ids, stop_set) for ids in canvas[:, prompt_length:].tolist()]
    return SampleResult(tokens, canvas, steps_run.tolist(), prompt_length, seconds, decoded, denoiser.forward_passes)


def uses_dream_schedule(backbone: Backbone, config: SamplerConfig) -> bool:
    """Whether `config` asks for Dream's schedule on `backbone` (auto: for Dream checkpoints, told by their shifted
    logits); refuses LLaDA-only options with it in one sentence."""
    dream = config.schedule == "dream" or (config.schedule == "auto" and backbone.shift_logits)
    llada_only = {"--cfg-scale": config.cfg_scale > 0, "--threshold": config.threshold is not None,
                  "--entropy-bound": config.entropy_bound is not None, "--cache": config.cache != "none"}
    given = [flag for flag, used in llada_only.items() if used]
    if dream and given:
        raise DllmPeftError(
            f"{', '.join(given)} belong(s) to LLaDA's schedule, but this run uses Dream's (--schedule "
            f"{config.schedule}); pass --schedule llada to use them"
        )
    return dream


def _dream_sample(
    backbone: Backbone,
    prompts: list[list[int]],
    config: SamplerConfig,
    generators: list[torch.Generator | None],
    on_step: Callable[[torch.Tensor, int], None] | None,
) -> SampleResult:
    """Dream's `diffusion_generate` per prompt, gathered into a left-padded `SampleResult`."""
    started = time.perf_counter()
    longest = max(len(prompt) for prompt in prompts)
    canvas = torch.full((len(prompts), longest + config.gen_length), backbone.eos_id, dtype=torch.long)
    seconds = []
    for row, (prompt, generator) in enumerate(zip(prompts, generators)):
        canvas[row, longest - len(prompt):] = dream_generate(backbone, prompt, config, generator).cpu()
        seconds.append(time.perf_counter() - started)
    if on_step is not None:
        on_step(canvas, config.steps)
    stop_set = set(stop_token_ids(backbone))
    tokens = [_cut_at_stop(ids, stop_set) for ids in canvas[:, longest:].tolist()]
    count = len(prompts)
    return SampleResult(tokens, canvas, [config.steps] * count, longest, seconds, [config.gen_length] * count,
                        config.steps * count)


def _step(
    block: torch.Tensor,
    logits: torch.Tensor,
    generators: list[torch.Generator | None],
    config: SamplerConfig,
    mask_id: int,
    stop_ids: torch.Tensor,
    count: int,
) -> torch.Tensor:
    """One denoising step on the current block of the active rows.

    Args:
        block: (A, L) token ids of the block, mask ids where still noisy.
        logits: (A, L, V) guided logits of those positions.
        generators: one per row (None: torch's default generator).
        count: tokens to commit per row under the fixed schedule (ignored by threshold / entropy-bound decoding).
    Returns:
        (A, L) the block with the chosen positions committed.
    """
    logits = logits.double()  # float64 throughout: low-precision Gumbel noise skews the samples (LLaDA's note)
    logits[..., mask_id] = float("-inf")
    if config.eos_suppression == "logits":
        logits[..., stop_ids] = float("-inf")
    gumbel_uniforms, remasking_uniforms = _draw_noise(generators, logits.shape[1:], config, block.device)
    if config.temperature > 0:
        # Gumbel-max: argmax(l/τ + G), G = −log(−log u), samples softmax(l/τ); LLaDA writes it exp(l)/(−log u)^τ.
        gumbel = -torch.log(-torch.log(gumbel_uniforms))  # (A, L, V)
        predicted = (logits / config.temperature + gumbel).argmax(dim=-1)  # (A, L)
    else:
        predicted = logits.argmax(dim=-1)  # (A, L)
    log_probs = logits.log_softmax(dim=-1)  # (A, L, V)
    if config.remasking == "low_confidence":
        confidence = log_probs.gather(-1, predicted[..., None]).squeeze(-1).exp()  # (A, L)
    else:
        confidence = remasking_uniforms  # (A, L)
    candidates = block == mask_id  # (A, L)
    demoted = torch.zeros_like(candidates)  # (A, L)
    if config.eos_suppression == "confidence":
        demoted = torch.isin(predicted, stop_ids)
        confidence = confidence - DEMOTION * demoted
    confidence = confidence.masked_fill(~candidates, float("-inf"))
    if config.threshold is not None:
        chosen = threshold_positions(confidence, candidates, config.threshold)
    elif config.entropy_bound is not None:
        entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)  # (A, L) nats
        chosen = entropy_bounded_positions(entropy, candidates, demoted, config.entropy_bound)
    else:
        chosen = top_k_positions(confidence, count)
    return torch.where(chosen, predicted, block)


def _draw_noise(
    generators: list[torch.Generator | None], shape: torch.Size, config: SamplerConfig, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per row, in row order: (L, V) Gumbel uniforms if temperature > 0, then (L,) remasking uniforms if random.

    Args:
        shape: (L, V), the block length and the vocabulary size.
    Returns:
        (A, L, V) and (A, L) float64 uniforms, each None when not needed.
    """
    gumbel, remasking = [], []
    for generator in generators:
        if config.temperature > 0:
            gumbel.append(torch.rand(shape, dtype=torch.float64, generator=generator, device=device))
        if config.remasking == "random":
            remasking.append(torch.rand(shape[0], dtype=torch.float64, generator=generator, device=device))
    return (torch.stack(gumbel) if gumbel else None), (torch.stack(remasking) if remasking else None)


def check_prompts(backbone: Backbone, prompts: list[list[int]], config: SamplerConfig) -> None:
    """Refuse, in one sentence, what the sampler cannot run: no prompts, empty ones, mask tokens, too long ones."""
    if not prompts:
        raise DllmPeftError("no prompts were given; pass at least one")
    for number, prompt in enumerate(prompts, start=1):
        if len(prompt) == 0:
            raise DllmPeftError(f"prompt {number} is empty; give every prompt at least one token")
        if backbone.mask_id in prompt:
            raise DllmPeftError(f"prompt {number} contains the mask token (id {backbone.mask_id}); remove it")
        if backbone.max_length is not None and len(prompt) + config.gen_length > backbone.max_length:
            raise DllmPeftError(
                f"prompt {number} has {len(prompt)} tokens, which with --gen-length {config.gen_length} exceeds the "
                f"model's context of {backbone.max_length}; shorten the prompt or lower --gen-length"
            )


def stop_token_ids(backbone: Backbone) -> tuple[int, ...]:
    """EOS, and the end-of-turn token when the tokenizer has one (LLaDA-Instruct ends answers with either)."""
    tokenizer = backbone.tokenizer
    eot = getattr(tokenizer, "eot_token_id", None)
    if eot is None and hasattr(tokenizer, "get_vocab"):
        eot = tokenizer.get_vocab().get(EOT_TOKEN)
    return (backbone.eos_id,) if eot is None or eot == backbone.eos_id else (backbone.eos_id, int(eot))


def _per_prompt_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, count: int
) -> list[torch.Generator | None]:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * count
    generators = list(generator)
    if len(generators) != count:
        raise DllmPeftError(f"{len(generators)} generators were given for {count} prompts; pass one per prompt")
    return generators


def _initial_canvas(
    prompts: list[list[int]], gen_length: int, backbone: Backbone
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts left-padded with EOS (as LLaDA pads) followed by `gen_length` masks.

    Returns:
        canvas (B, P + gen_length), attention mask (B, P + gen_length) with 0 on padding, and RoPE positions
        (B, P + gen_length) counting from each prompt's first real token (padding gets position 0).
    """
    longest = max(len(prompt) for prompt in prompts)
    canvas = torch.full((len(prompts), longest + gen_length), backbone.mask_id, dtype=torch.long)
    attention_mask = torch.ones_like(canvas)
    for row, prompt in enumerate(prompts):
        padding = longest - len(prompt)
        canvas[row, :padding] = backbone.eos_id
        canvas[row, padding:longest] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, :padding] = 0
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    return canvas, attention_mask, position_ids


def _cut_at_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[:index]
    return ids
