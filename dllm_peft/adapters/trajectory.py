"""LoRA-Diffusion's trajectory-level adapter (Khazrak & Green, 2026; `seeds/lora-diffusion-paper.md`, §3.2–3.3).

The paper perturbs the denoising trajectory instead of the weights: x_{t−1} = f_θ0(x_t, t, c) + Σ_i σ(t) · g_i(x_t, t)
with g_i(x, t) = A_i · ReLU(B_i · [x; Emb(t)]). Our reading for a masked-diffusion LM, where one denoising step is one
forward pass from a partly masked canvas to token logits:

  * "x_t" is the representation the step produces before it is read out: the final hidden states h (B, T, d) that
    enter the LM head. The residual is added there, h ← h + Σ_i σ(λ) g_i(h, λ), so a step's logits — and through them
    every committed token, i.e. the trajectory — move by a learned low-rank perturbation of the frozen path. (A
    perturbation of token ids is not differentiable; one of the hidden states at the head is the closest faithful
    analogue, and it leaves every weight of the base untouched.)
  * "t" is the noise level λ (the masked fraction, `diffusion/conditioning.py`); Emb is NaRA's Gaussian Fourier embedding
    (64-d, σ = 16).
  * early / middle / late thirds of the trajectory are λ > 2/3, 1/3 < λ ≤ 2/3 and λ ≤ 1/3 (high noise first; the
    same ceil rule as Multi-LoRA's bins). Each module keeps one factor pair per third, of rank 64 / 32 / 8, used with
    scale σ = 1.0 / 0.5 / 0.25; each sample uses the pair of its own third.
  * A_i is not conditioned on the instruction c (the paper's A_i(c) = W_A + W_A,cond · Enc(c)): in a bidirectional
    model h already attends to the instruction. Enc(c) drives the router that composes task adapters (`router.py`).

k = 2 modules by default. A_i starts at zero (B_i Kaiming-uniform), so a fresh adapter is a no-op. Training adds the
paper's regularisers through the method's `regularization` hook: λ_rank · Σ (‖W_A‖_* + ‖W_B‖_*) over every factor,
and λ_orth · Σ_{i≠j} ‖W_Aiᵀ W_Aj‖²_F over pairs of modules of the same third (only they act together), with
λ_rank = 0.01 and λ_orth = 0.001. Nuclear norms use `svdvals`, whose gradient is stable also at the zero start.
The residual is non-linear in h, so the adapter does not merge into weights.

Sharp edge of the paper's recipe, kept as specified: while W_A = 0 (the no-op start) W_B gets no gradient from the
data, only the nuclear norm's, whose size does not shrink with the matrix; AdamW turns it into full-learning-rate
steps, so on a weak task signal W_B collapses before W_A can grow and the adapter stays at exactly zero
(`benchmarks/trajectory_router/`: dllm-tiny on `builtin:reverse`). A smaller `rank_weight` (10⁻³) avoids it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DllmPeftError
from .base import MethodConfig, ModelAdapter, find_model_adapter, output_head_name
from .multilora import noise_bins
from .nara import FourierEmbedding


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig(MethodConfig):
    method = "trajectory"

    modules: int = dataclasses.field(default=2, metadata={"help": "Number k of perturbation modules g_i."})
    ranks: tuple[int, ...] = dataclasses.field(
        default=(64, 32, 8), metadata={"help": "Rank per part of the trajectory, from the noisiest (early) on."}
    )
    scales: tuple[float, ...] = dataclasses.field(
        default=(1.0, 0.5, 0.25), metadata={"help": "Scale σ per part of the trajectory, from the noisiest on."}
    )
    embedding_dim: int = dataclasses.field(default=64, metadata={"help": "Width of the Fourier embedding Emb(λ)."})
    fourier_sigma: float = dataclasses.field(default=16.0, metadata={"help": "σ of the Fourier frequencies."})
    rank_weight: float = dataclasses.field(default=0.01, metadata={"help": "λ_rank of the nuclear-norm regulariser."})
    orth_weight: float = dataclasses.field(default=0.001, metadata={"help": "λ_orth of the orthogonality regulariser."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(self.ranks))
        object.__setattr__(self, "scales", tuple(self.scales))
        if self.modules < 1:
            raise DllmPeftError(f"modules must be a positive integer, got {self.modules}")
        if not self.ranks or len(self.ranks) != len(self.scales):
            raise DllmPeftError(f"ranks {self.ranks} and scales {self.scales} need one entry per trajectory part")
        if min(self.ranks) < 1:
            raise DllmPeftError(f"every rank must be a positive integer, got {self.ranks}")
        if self.embedding_dim < 2 or self.embedding_dim % 2:
            raise DllmPeftError(f"the Fourier embedding needs an even embedding_dim, got {self.embedding_dim}")
        if self.rank_weight < 0 or self.orth_weight < 0:
            raise DllmPeftError("rank_weight and orth_weight must be at least 0")


class PhaseFactors(nn.Module):
    """One module's factors for one part of the trajectory: W_B (r, d + e) and W_A (d, r)."""

    def __init__(self, width: int, embedding_dim: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, width + embedding_dim))  # W_B
        self.up = nn.Parameter(torch.zeros(width, rank))  # W_A: zero, so a fresh adapter is a no-op
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """A · ReLU(B · [h; e]) for hidden (b, T, d) and features (b, e); returns (b, T, d)."""
        width = hidden.shape[-1]
        # W_B · [h; e] without materialising the concatenation: the e-part is one (b, r) term per sequence
        pre = hidden @ self.down[:, :width].T + (features @ self.down[:, width:].T)[:, None, :]  # (b, T, r)
        return F.relu(pre) @ self.up.T


class TrajectoryResidual(nn.Module):
    """Σ_i σ(λ) · g_i(h, λ) for one task: k modules × one factor pair per part of the trajectory."""

    def __init__(self, config: TrajectoryConfig, width: int):
        super().__init__()
        self.config = config
        self.embedding = FourierEmbedding(config.embedding_dim, config.fourier_sigma)
        self.perturbations = nn.ModuleList(
            nn.ModuleList(PhaseFactors(width, config.embedding_dim, rank) for rank in config.ranks)
            for _ in range(config.modules)
        )

    def phase(self, noise_level: torch.Tensor) -> torch.Tensor:
        """Index into `ranks`/`scales` per sample: 0 for the noisiest part (early), the last for λ ≤ 1/P. (B,) long."""
        parts = len(self.config.ranks)
        return parts - 1 - noise_bins(noise_level, parts)

    def forward(self, hidden: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        """The perturbation of hidden (B, T, d) at noise levels (B,); returns (B, T, d) in float32."""
        noise_level = noise_level.to(hidden.device).float().expand(hidden.shape[0])  # (B,)
        features = self.embedding(noise_level)  # (B, e)
        phases = self.phase(noise_level)  # (B,)
        hidden = hidden.float()
        residual = torch.zeros_like(hidden)
        for index, scale in enumerate(self.config.scales):
            rows = (phases == index).nonzero().squeeze(1)  # samples in this part of the trajectory
            if rows.numel():
                parts = [module[index](hidden[rows], features[rows]) for module in self.perturbations]
                residual = residual.index_add(0, rows, scale * torch.stack(parts).sum(dim=0))
        return residual

    def regularization(self) -> torch.Tensor:
        """λ_rank · Σ nuclear norms of W_A and W_B + λ_orth · Σ_{i≠j} ‖W_Aiᵀ W_Aj‖²_F per part. Returns ()."""
        nuclear = sum(
            torch.linalg.svdvals(factors.down).sum() + torch.linalg.svdvals(factors.up).sum()
            for module in self.perturbations
            for factors in module
        )
        overlap = torch.zeros((), device=self.embedding.frequencies.device)
        for index in range(len(self.config.ranks)):
            ups = [module[index].up for module in self.perturbations]
            for i, first in enumerate(ups):
                for j, second in enumerate(ups):
                    if i != j:
                        overlap = overlap + (first.T @ second).square().sum()
        return self.config.rank_weight * nuclear + self.config.orth_weight * overlap


def output_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The LM head's name and module; a model whose head is its input embedding has no input to perturb there."""
    name = output_head_name(model)
    if name is None:
        raise DllmPeftError(
            "trajectory adapters act on the input of the LM head, and this model has no separate head module "
            "(its head is tied to the input embedding); use another method"
        )
    return name, model.get_submodule(name)


class TrajectoryAdapter(ModelAdapter):
    """h ← h + Σ_i σ(λ) g_i(h, λ) on the hidden states entering the LM head, λ read from the router per sample."""

    needs_noise_level = True

    def __init__(self, model: nn.Module, config: TrajectoryConfig, router):
        super().__init__(model, config, router)
        _, head = output_head(model)
        self.residual = TrajectoryResidual(config, head.in_features)

    def attach(self, model: nn.Module) -> list[str]:
        name, head = output_head(model)
        self._hooks.append(head.register_forward_pre_hook(self._perturb))
        return [name]

    def _perturb(self, head: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # (B, T, d), the frozen base's final hidden states
        level = self.router.noise_level(hidden.shape[0])
        return (hidden + self.residual(hidden, level).to(hidden.dtype), *args[1:])

    def regularization(self) -> torch.Tensor:
        return self.residual.regularization()


def trajectory_regularization(model: nn.Module) -> torch.Tensor:
    """The regularisation term the training loop adds to the loss of a model carrying a trajectory adapter. ()."""
    adapter = find_model_adapter(model)
    if adapter is None or not hasattr(adapter, "regularization"):
        raise DllmPeftError("the model carries no trajectory adapter to regularise")
    return adapter.regularization()
