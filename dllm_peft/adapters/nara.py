"""NaRA — Noise-aware Low-Rank Adaptation (Wang, Zhuang, Huang, Zhang; ICML 2026, arXiv 2605.29716).

ΔW(λ) = s · B · C(λ) · A with an r × r core C(λ) = I_r + η · reshape(F(e(λ)), r, r), where λ is the noise level (the
masked fraction, see `diffusion/conditioning.py`), e is a noise embedding and F a small hypernetwork shared by every adapted
module of every layer. F's last layer starts at zero, so C = I at step 0 and NaRA starts exactly as LoRA.

Defaults follow the authors' released recipes (`method-facts.md`): η = 0.1, s = 1.0, dropout 0.05, a 64-d Gaussian
Fourier embedding with σ = 16 (no 2π factor), F = Linear(64→256) → SiLU → Linear(256→512) → SiLU → Linear(512→r²).
Differences from the reference, on purpose: C is computed per sample, shape (B, r, r), so batches may mix noise
levels (the reference supports batch size 1 only); F always runs in float32, also under autocast.

Speed (the sampler's case: every step is a forward at a new λ, often one λ for the whole batch). F has as many
parameters as a small model (673 k at r = 32), so running it is what costs, not the r × r products:
* F runs once per *distinct* λ of a batch, and a batch at one λ gets a single (1, r, r) core, applied as one
  (…, r) × (r, r) product per layer (mixed λ: one batched product per layer);
* without autograd (sampling, evaluation) C(λ) is remembered per λ value until a core parameter changes (its
  version counter moves; writes through `.data` bypass it, call `forget()` after those), so a λ seen before —
  every prompt of an evaluation walks the same λ grid k / gen_length — skips F;
* without autograd, a batch at one λ folds the core into B: each layer computes B' = B · C(λ) once and runs the plain
  LoRA product (A x) → B' (A x), so sampling costs what LoRA's does. The fold is for inference only: training keeps
  B (C (A x)), whose gradients it was checked against. The two orders round differently in the last bits (the
  sampler's canvases stay the same, `tests/test_nara.py`); the folded B' is remembered per core while it fits
  `FOLD_MEMO_BYTES` for at least `MIN_FOLDS` values of λ (small layers, where the product is a visible share of the
  work), and recomputed each forward otherwise (large layers, where it costs less than 0.1 % of the layer).

NaRA-C (the paper's ablation) replaces C(λ) by a learned constant I + η · P with P starting at zero.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.conditioning import as_noise_level
from ..errors import DllmPeftError
from ..models.targets import matches_target
from .base import AdapterConfig
from .lora import LoraLayer

EMBEDDINGS = ("fourier", "mlp", "raw")
FOLD_MEMO_BYTES = 2 * 2**20  # per layer: folded B' = B · C(λ) remembered for this many bytes of λ values at most
MIN_FOLDS = 16  # fewer λ values than this fit: remembering would not survive a sampler's λ grid, so fold each forward


@dataclasses.dataclass(frozen=True)
class NaraCConfig(AdapterConfig):
    method = "nara-c"
    constant_core: ClassVar[bool] = True

    eta: float = dataclasses.field(default=0.1, metadata={"help": "Scale η of the core's deviation from I."})
    groups: tuple[tuple[str, ...], ...] | None = dataclasses.field(
        default=None,
        metadata={"help": "Module groups that each get their own core, e.g. ((q_proj, k_proj), (v_proj, attn_out))."},
    )


@dataclasses.dataclass(frozen=True)
class NaraConfig(NaraCConfig):
    method = "nara"
    constant_core: ClassVar[bool] = False

    embedding: str = dataclasses.field(default="fourier", metadata={"help": "Noise embedding: fourier, mlp or raw."})
    embedding_dim: int = dataclasses.field(default=64, metadata={"help": "Width of the noise embedding."})
    fourier_sigma: float = dataclasses.field(default=16.0, metadata={"help": "σ of the Fourier frequencies."})
    hidden_sizes: tuple[int, ...] = dataclasses.field(
        default=(256, 512), metadata={"help": "Hidden widths of the hypernetwork F."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding not in EMBEDDINGS:
            raise DllmPeftError(f"unknown NaRA embedding {self.embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
        if self.embedding == "fourier" and self.embedding_dim % 2:
            raise DllmPeftError(f"the Fourier embedding needs an even embedding_dim, got {self.embedding_dim}")
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))


# -- noise embeddings e(λ): (B,) → (B, d) -------------------------------------------------------------------------
class FourierEmbedding(nn.Module):
    """[sin(λ·W), cos(λ·W)] with W ~ N(0, σ²) fixed; the buffer is saved with the adapter."""

    def __init__(self, dim: int, sigma: float):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(dim // 2) * sigma)

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        angles = noise_level[:, None] * self.frequencies[None, :]  # (B, d/2)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (B, d)


class MlpEmbedding(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(nn.Linear(1, dim), nn.SiLU())

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        return super().forward(noise_level[:, None])


class RawEmbedding(nn.Module):
    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        return noise_level[:, None]  # (B, 1)


# -- cores ----------------------------------------------------------------------------------------------------------
class NoiseCore(nn.Module):
    """C(λ) = I + η · reshape(F(e(λ)), r, r): (B,) → (B, r, r), in float32 whatever the autocast state."""

    needs_noise_level = True
    memo_size = 1024  # remembered λ values (r² floats each); the sampler's λ grid is gen_length + 1 values

    def __init__(self, config: NaraConfig):
        super().__init__()
        self.rank, self.eta = config.rank, config.eta
        if config.embedding == "fourier":
            self.embedding: nn.Module = FourierEmbedding(config.embedding_dim, config.fourier_sigma)
            width = config.embedding_dim
        elif config.embedding == "mlp":
            self.embedding, width = MlpEmbedding(config.embedding_dim), config.embedding_dim
        else:
            self.embedding, width = RawEmbedding(), 1
        layers: list[nn.Module] = []
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, config.rank * config.rank)
        nn.init.zeros_(last.weight)  # identity-plus-deviation: C = I at step 0
        nn.init.zeros_(last.bias)
        self.hypernetwork = nn.Sequential(*layers, last)
        self._memo: dict[float, torch.Tensor] = {}  # λ → (1, r, r), valid while `_memo_stamp` matches the parameters
        self._memo_stamp: tuple = ()
        # The submodules' parameter and buffer dicts in a plain list: read per forward, cheaper than `parameters()`.
        self._dicts = [tensors for module in self.modules() for tensors in (module._parameters, module._buffers)]

    def forward(self, noise_level: torch.Tensor | None) -> torch.Tensor:
        """C for each λ of `noise_level` (B,): (B, r, r), or (1, r, r) when every λ is the same."""
        if noise_level is None:
            raise DllmPeftError("NaRA's core needs a noise level")
        if not torch.is_grad_enabled():
            return self._remembered(noise_level)
        levels, inverse = torch.unique(noise_level, return_inverse=True)  # F once per distinct λ
        cores = self._compute(levels)  # (U, r, r)
        return cores if len(levels) == 1 else cores[inverse]

    def _compute(self, levels: torch.Tensor) -> torch.Tensor:
        """I + η · reshape(F(e(λ)), r, r) for `levels` (U,): (U, r, r)."""
        device = self.hypernetwork[-1].weight.device
        with torch.autocast(device_type=device.type, enabled=False):
            features = self.embedding(levels.to(device=device, dtype=torch.float32))  # (U, d)
            deviation = self.hypernetwork(features.float()).view(-1, self.rank, self.rank)  # (U, r, r)
        identity = torch.eye(self.rank, device=device, dtype=deviation.dtype)
        return identity + self.eta * deviation

    def _remembered(self, noise_level: torch.Tensor) -> torch.Tensor:
        """The no-autograd path: each λ's core computed alone once, then reused until a parameter changes."""
        stamp = tuple((id(t), t._version, t.data_ptr()) for t in self._tensors())
        if stamp != self._memo_stamp or len(self._memo) >= self.memo_size:
            self._memo, self._memo_stamp = {}, stamp
        if noise_level.numel() == 1:  # the sampler's case, once per forward
            value = noise_level.item()
            core = self._memo.get(value)
            if core is None:
                core = self._memo[value] = self._compute(torch.tensor([value]))  # (1, r, r)
            return core
        values = noise_level.tolist()
        for value in dict.fromkeys(values):
            if value not in self._memo:
                # Alone, not batched with other new values: C(λ) is then one fixed tensor whatever came before.
                self._memo[value] = self._compute(torch.tensor([value]))  # (1, r, r)
        if len(set(values)) == 1:
            return self._memo[values[0]]  # (1, r, r), the same tensor each time: layers may key their fold on it
        return torch.cat([self._memo[value] for value in values])  # (B, r, r)

    def forget(self) -> None:
        """Drop the remembered cores: the next forwards run F again."""
        self._memo = {}

    def _tensors(self) -> list[torch.Tensor]:
        """Every parameter and buffer, read from the submodules' own dicts (a tensor assigned anew is seen)."""
        return [tensor for tensors in self._dicts for tensor in tensors.values() if tensor is not None]


class ConstantCore(nn.Module):
    """NaRA-C: C = I + η · P, learned, the same at every noise level. Returns (1, r, r)."""

    needs_noise_level = False

    def __init__(self, config: NaraCConfig):
        super().__init__()
        self.eta = config.eta
        self.deviation = nn.Parameter(torch.zeros(config.rank, config.rank))

        self._remembered: tuple[tuple, torch.Tensor] | None = None  # without autograd: (stamp of P, core)

    def forward(self, noise_level: torch.Tensor | None = None) -> torch.Tensor:
        stamp = (self.deviation._version, self.deviation.data_ptr())
        if not torch.is_grad_enabled() and self._remembered is not None and self._remembered[0] == stamp:
            return self._remembered[1]  # the same tensor while P is unchanged: layers keep their fold of it
        identity = torch.eye(self.deviation.shape[0], device=self.deviation.device)
        core = (identity + self.eta * self.deviation)[None]  # (1, r, r)
        if not torch.is_grad_enabled():
            self._remembered = (stamp, core)
        return core


def group_key(config: NaraCConfig, module_name: str) -> str:
    """The router key of the core that module `module_name` uses ("shared" unless `groups` is set)."""
    if config.groups is None:
        return "shared"
    for index, group in enumerate(config.groups):
        if any(matches_target(target, module_name) for target in group):
            return f"group{index}"
    raise DllmPeftError(f"module {module_name!r} belongs to no NaRA group; add its name to one of the groups")


class SharedCoreMixin:
    """The core plumbing every NaRA-style layer shares: one core module per group, registered in the router."""

    @classmethod
    def build_shared(cls, config: NaraCConfig, module_names: list[str]) -> dict[str, nn.Module]:
        keys = sorted({group_key(config, name) for name in module_names})
        core = ConstantCore if config.constant_core else NoiseCore
        return {key: core(config) for key in keys}

    def __init__(self, base_layer: nn.Linear, config: NaraCConfig, name: str, router):
        super().__init__(base_layer, config, name, router)
        self.core_key = group_key(config, name)

    def core(self, batch_size: int) -> torch.Tensor:
        """C(λ) for the current forward: (B or 1, r, r)."""
        return self.router.derived(self.core_key, batch_size)


class NaraLayer(SharedCoreMixin, LoraLayer):
    """y = W0 x + s · B (C(λ) (A x)) with C read from the router, per sample."""

    fold_at_inference: ClassVar[bool] = True  # see the module docstring, "Speed"; False: always B (C (A x))

    def __init__(self, base_layer: nn.Linear, config: NaraCConfig, name: str, router):
        super().__init__(base_layer, config, name, router)
        self._folds: dict[int, tuple] = {}  # id(core) → `_fold`'s entry

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down = self.project_down(x)  # (B, ..., r)
        core = self.core(down.shape[0])  # (B or 1, r, r)
        if core.shape[0] == 1 and self.fold_at_inference and not torch.is_grad_enabled():
            # (B · C) (A x), LoRA's cost. Inline, not a method: this runs in every adapted layer of every sampler step.
            up = self.lora_B
            remembered = self._folds.get(id(core))  # (core, B · C, B's version, B's storage)
            if remembered is None or remembered[2] != up._version or remembered[3] != up.data_ptr():
                remembered = self._fold(core, up)
            update = F.linear(down, remembered[1])  # (B, ..., out)
            return update if self.config.scale == 1.0 else self.config.scale * update
        core = core.to(down.dtype)
        if core.shape[0] == 1:  # one λ for the batch (training's usual case at batch 1): one r × r product
            mixed = F.linear(down, core[0])  # row-vector form of C · (A x)
        else:
            flat = down.reshape(down.shape[0], -1, down.shape[-1])  # (B, N, r)
            mixed = (flat @ core.transpose(1, 2)).reshape(down.shape)  # per sample
        update = F.linear(mixed, self.lora_B)  # (B, ..., out)
        return update if self.config.scale == 1.0 else self.config.scale * update  # as LoRA: skip a multiply by 1

    def _fold(self, core: torch.Tensor, up: torch.Tensor) -> tuple:
        """B · C for the core (1, r, r) of this forward and B = `up`, remembered while B is unchanged and the memo
        holds `MIN_FOLDS` values of λ (see the module docstring): (core, (out, r) B · C, B's version, B's storage)."""
        folded = up @ core[0].to(up.dtype)  # (out, r)
        entry = (core, folded, up._version, up.data_ptr())  # the core kept alive: its id is the key
        capacity = FOLD_MEMO_BYTES // (folded.numel() * folded.element_size())
        if capacity >= MIN_FOLDS:
            if len(self._folds) >= capacity:  # entries of an older B are skipped by `delta`'s check, then dropped here
                self._folds = {}
            self._folds[id(core)] = entry
        return entry

    def low_rank_factors(self, noise_level: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """At a fixed λ NaRA is a plain LoRA with B' = B · C(λ): left (out, r) = s · B · C(λ), right (r, in) = A."""
        module = self.router.shared[self.core_key]
        if module.needs_noise_level and noise_level is None:
            raise DllmPeftError("NaRA's update depends on the noise level; choose one with --noise-level")
        level = None if noise_level is None else as_noise_level(noise_level)
        core = module(level)[0].to(self.lora_B.dtype)  # (r, r)
        return self.config.scale * (self.lora_B @ core), self.lora_A
