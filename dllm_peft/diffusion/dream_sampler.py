"""Dream's own sampler: `diffusion_generate` of the Dream release (Dream-org, `generation_utils.py`, `_sample`).

LLaDA's schedule (`sampler.py`) commits a fixed number of tokens per step inside blocks; Dream decodes the whole
response at once on a continuous-time schedule. With timesteps t_i = linspace(1, ε, steps + 1) (ε = 10⁻³), step i
goes from t = t_i to s = t_{i+1} and, on the canvas's masked positions (the logits shifted back by one, as Dream
predicts position j at j − 1):

  * `origin`: each masked position is decoded with probability 1 − s/t (all of them at the last step), its token
    sampled from the (temperature, top-p, top-k filtered) softmax;
  * `maskgit_plus` / `topk_margin` / `entropy`: every masked position gets a token and a confidence — its probability,
    the margin between its two most likely tokens, or its negative entropy — and int(M · (1 − s/t)) of the M masked
    positions are committed (all at the last step): the most confident, or with `alg_temp` > 0 a draw without
    replacement from softmax(confidence / alg_temp).

Tokens are sampled as Dream samples them: softmax(logits / temperature) after top-p and top-k filtering (filtered
logits set to the dtype's minimum), one categorical draw per position (`torch.multinomial` on the normalised
probabilities, which is what `torch.distributions.Categorical.sample` runs), or the argmax at temperature 0. The
draws come from the prompt's generator in Dream's order, so with a generator seeded like Dream's global seed the
committed tokens are Dream's, step for step (tests/test_dream_sampler.py checks this against a re-implementation of
Dream's loop that uses the global RNG, as the original does).

Where we differ: Dream's batched loop averages the masked count over the batch and can then re-mask committed tokens
of a row with fewer masks; we run each prompt as a batch of one (equal to Dream for one prompt, and a prompt's output
never depends on its batch). λ for noise-aware adapters is the masked fraction of the response, as in `sampler.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import SamplerConfig
from ..models.backbone import Backbone
from .conditioning import noise_level

DREAM_EPS = 1e-3  # Dream's default `eps`: the schedule stops at t = ε


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream's top-p then top-k filtering of (N, V) logits: removed entries are set to the dtype's minimum."""
    if top_p is not None and top_p < 1:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)  # (N, V)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses top_p
        remove[..., 0] = False
        removed = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
        logits = logits.masked_fill(removed, torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]  # (N, 1)
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    return logits


def sample_tokens(
    logits: torch.Tensor, config: SamplerConfig, generator: torch.Generator | None, confidence_kind: str = "probability"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's `sample_tokens`: (confidence (N,), tokens (N,)) for logits (N, V)."""
    if config.temperature > 0:
        logits = logits / config.temperature
    probs = torch.softmax(filter_logits(logits, config.top_p, config.top_k), dim=-1)  # (N, V)
    if config.temperature > 0 and probs.shape[0] > 0:
        normalised = probs / probs.sum(dim=-1, keepdim=True)  # what Categorical(probs=…) samples from
        tokens = torch.multinomial(normalised, 1, True, generator=generator).squeeze(-1)  # (N,)
        confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        confidence, tokens = probs.max(dim=-1)
    if confidence_kind == "margin":
        top2 = torch.sort(probs, dim=-1, descending=True)[0][:, :2]  # (N, 2)
        confidence = top2[:, 0] - top2[:, 1]
    elif confidence_kind == "neg_entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return confidence, tokens


CONFIDENCE_OF_ALG = {"maskgit_plus": "probability", "topk_margin": "margin", "entropy": "neg_entropy"}


@torch.no_grad()
def dream_generate(
    backbone: Backbone,
    prompt: list[int],
    config: SamplerConfig,
    generator: torch.Generator | None = None,
    on_step: Callable[[torch.Tensor, int], None] | None = None,
) -> torch.Tensor:
    """Dream's `diffusion_generate` for one prompt: `config.gen_length` new tokens in `config.steps` steps.

    `on_step(canvas (1, T), i)` sees the canvas after every step (Dream's `output_history`).

    Returns:
        (P + gen_length,) the final canvas.
    """
    device = backbone.device
    canvas = torch.tensor([*prompt] + [backbone.mask_id] * config.gen_length, device=device)[None]  # (1, T)
    timesteps = torch.linspace(1, DREAM_EPS, config.steps + 1, device=device)
    for i in range(config.steps):
        masked = canvas == backbone.mask_id  # (1, T)
        level = masked[:, len(prompt):].float().mean(dim=1)  # (1,) λ
        with noise_level(backbone.model, level):
            logits = backbone.logits(canvas, noise_level=level)  # (1, T, V), already shifted back for Dream
        masked_logits = logits[masked]  # (M, V)
        t, s = timesteps[i], timesteps[i + 1]
        last = i == config.steps - 1
        if config.alg == "origin":
            p_transfer = 1.0 if last else 1 - s / t
            proposal = torch.full((masked_logits.shape[0],), backbone.mask_id, dtype=torch.long, device=device)
            decoded = torch.rand(proposal.shape, device=device, generator=generator) < p_transfer  # (M,)
            proposal[decoded] = sample_tokens(masked_logits[decoded], config, generator)[1]
            canvas[masked] = proposal
            if on_step is not None:
                on_step(canvas, i)
            continue
        confidence, tokens = sample_tokens(masked_logits, config, generator, CONFIDENCE_OF_ALG[config.alg])
        count = masked.sum().item()
        commit = count if last else int(count * (1 - s / t))
        if commit > 0:
            _commit(canvas, masked, confidence.to(logits.dtype), tokens, commit, config.alg_temp, backbone.mask_id,
                    generator)
        if on_step is not None:
            on_step(canvas, i)
    return canvas[0]


def _commit(
    canvas: torch.Tensor,
    masked: torch.Tensor,
    confidence: torch.Tensor,
    tokens: torch.Tensor,
    commit: int,
    alg_temp: float | None,
    mask_id: int,
    generator: torch.Generator | None,
) -> None:
    """Write `commit` of the proposed tokens into canvas (1, T): the most confident, or drawn at `alg_temp`."""
    full_confidence = torch.full(canvas.shape, -torch.inf, device=canvas.device, dtype=confidence.dtype)  # (1, T)
    full_confidence[masked] = confidence
    if not alg_temp:
        chosen = torch.topk(full_confidence, commit).indices  # (1, commit)
    else:
        weights = F.softmax(full_confidence / alg_temp, dim=-1)
        chosen = torch.multinomial(weights, num_samples=commit, generator=generator)  # (1, commit)
    proposal = torch.full_like(canvas, mask_id)
    proposal[masked] = tokens
    canvas[0, chosen[0]] = proposal[0, chosen[0]]
