"""Native SEDD (Lou et al. 2024, "Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution"),
absorbing graph only, no remote code — and how a score model becomes a denoiser.

Read from louaaron/Score-Entropy-Discrete-Diffusion (`model/transformer.py`, `graph_lib.py`, `sampling.py`) and the
hub checkpoints `louaaron/sedd-small` / `sedd-medium`, whose layout `load_sedd` reads as it is:

    config.json        the authors' Hydra run config: `tokens` (50257), `graph.type` ("absorb"), `noise.*`,
                       `model.{hidden_size, cond_dim, n_heads, n_blocks, dropout, scale_by_sigma, length}`
    pytorch_model.bin  a pickled dict of tensors with unprefixed keys (`vocab_embed.embedding`, `blocks.0.…`), read
                       with `torch.load(weights_only=True)` only; a `model.safetensors` is accepted as well
    no tokenizer       the authors use GPT-2's

The network (`dit.DiT`) has `tokens + 1` output columns; the last is the absorbing state, the mask id `tokens`.
Its output is a log-score: log s_θ(x, σ)_y ≈ log p_σ(x with position i set to y) / p_σ(x). With `scale_by_sigma` the
authors subtract log(e^σ − 1) + log(V − 1) from it, and they set the column of each input token to 0 (`log_score`).

From log-scores to the denoiser. On the absorbing graph with total noise σ a clean token stays with probability
e^(−σ) and becomes the mask otherwise, so at a masked position i, for a clean token y,

    s_y = p_σ(x^{i←y}) / p_σ(x) = e^(−σ) p₀(y | x) / (1 − e^(−σ)) = p₀(y | x) / (e^σ − 1),

i.e. the scores at a masked position are the denoiser's distribution p₀(y | x) up to the factor 1 / (e^σ − 1), the
same for every y. SEDD's own sampler reads them so: its `Denoiser` step (and the analytic step at large dσ) forms
`staggered_score(score, σ) · transp_transition(x, σ)`, which at a masked position is (e^σ − 1)·s_y for y ≠ mask,
drops the mask column and samples from what is left, normalised. So the denoiser's logits are the log-scores with the
mask column at −∞: their softmax is p₀(y | x); every per-position constant (scale_by_sigma's included) cancels.
Unmasked positions keep their token (the graph is absorbing) and are never read as predictions.

Training an adapter on SEDD therefore uses dllm-peft's masked-diffusion loss (cross-entropy of this distribution at
the masked positions, weighted 1/λ), not SEDD's score-entropy loss; both are bounds on the same likelihood, but the
numbers differ from the authors' training curves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers.modeling_outputs import MaskedLMOutput

from ..errors import DllmPeftError
from .dit import (
    DiT,
    DiTConfig,
    denoiser_logits,
    load_weights,
    read_state_dict,
    refuse_cache,
)

SEDD_MODEL_TYPE = "sedd"
SEDD_MODEL_KEYS = ("hidden_size", "cond_dim", "n_heads", "n_blocks")


class SEDDModel(DiT):
    """SEDD's score network (keys unprefixed, as the authors save it); `forward` gives denoiser logits."""

    takes_sigma = True  # `Backbone.logits` passes σ = −log(1 − λ)

    def __init__(self, config: DiTConfig, scale_by_sigma: bool):
        super().__init__(config)
        self.scale_by_sigma = scale_by_sigma
        self.mask_id = config.vocab_size - 1

    def log_score(self, indices: torch.Tensor | None, sigma: torch.Tensor, **network_inputs) -> torch.Tensor:
        """The authors' output: (B, T, V) log-scores, 0 at each position's own token (and σ-scaled if configured)."""
        scores = super().forward(indices, sigma, **network_inputs)  # (B, T, V)
        if self.scale_by_sigma:
            sigma = sigma.reshape(-1).expand(scores.shape[0]).float()
            e_sigma_minus_one = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1)  # expm1 for small σ
            scores = scores - e_sigma_minus_one.log().to(scores.dtype)[:, None, None] - math.log(scores.shape[-1] - 1)
        if indices is not None:
            scores = scores.scatter(-1, indices[..., None], 0.0)
        return scores

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Any = None,
    ) -> MaskedLMOutput:
        """Args: input_ids (B, T); sigma (B,) total noise (required); the rest as `DiT.forward`."""
        refuse_cache(use_cache, past_key_values)
        if sigma is None:
            raise DllmPeftError("SEDD needs the noise level of its input; call it through Backbone.logits")
        scores = self.log_score(input_ids, sigma, attention_mask=attention_mask, position_ids=position_ids,
                                inputs_embeds=inputs_embeds)
        return MaskedLMOutput(logits=denoiser_logits(scores, self.mask_id))


def is_sedd_config(config: dict[str, Any]) -> bool:
    """The authors' Hydra config: `tokens`, a `graph` section and a `model` section (it has no model_type)."""
    return "tokens" in config and isinstance(config.get("graph"), dict) and isinstance(config.get("model"), dict)


def sedd_config(raw: dict[str, Any], directory: Path) -> tuple[DiTConfig, bool]:
    """(network config, scale_by_sigma) from the authors' run config."""
    graph = raw["graph"].get("type")
    if graph != "absorb":
        raise DllmPeftError(f"{directory} holds a SEDD model on the {graph!r} graph; only the absorbing graph "
                            "(graph.type: absorb) is a masked denoiser — use an absorbing checkpoint such as sedd-small")
    model = raw["model"]
    missing = [key for key in SEDD_MODEL_KEYS if key not in model]
    if missing:
        raise DllmPeftError(f"{directory / 'config.json'} has no model.{', model.'.join(missing)}; use the config.json "
                            "of the checkpoint (as louaaron/sedd-small ships it)")
    config = DiTConfig(
        model_type=SEDD_MODEL_TYPE, vocab_size=int(raw["tokens"]) + 1, hidden_size=int(model["hidden_size"]),
        cond_dim=int(model["cond_dim"]), n_heads=int(model["n_heads"]), n_blocks=int(model["n_blocks"]),
        dropout=float(model.get("dropout", 0.1)), model_length=model.get("length"),
    )
    return config, bool(model.get("scale_by_sigma", False))


def load_sedd(directory: Path, raw: dict[str, Any], dtype: torch.dtype, device: torch.device) -> SEDDModel:
    """The SEDD checkpoint in `directory` (config already read as `raw`), in `dtype` on `device`, in eval mode."""
    config, scale_by_sigma = sedd_config(raw, directory)
    with torch.device("meta"):
        model = SEDDModel(config, scale_by_sigma)
    return load_weights(model, read_state_dict(directory), directory, dtype, device).eval()
