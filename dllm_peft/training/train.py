"""The training loop: explicit and short (nanoGPT style), masked-diffusion SFT of an adapter, one or many processes.

`train(config, on_progress, on_report)` loads the backbone and the data, injects the adapter and runs AdamW with the
reference settings (β = (0.9, 0.95), weight decay 0.05, ε = 1e-8, linear schedule with 5 % warm-up, gradient
clipping at 1.0), then writes the adapter. It never prints: per-step progress goes to `on_progress`, everything else
(the data's length report, validations, checkpoints, a resume) to `on_report`; the CLI renders both.

Scale: `accelerate` runs the processes (`accelerate launch`: DDP over the adapter's parameters, gloo on CPU) and the
autocast (bf16/fp16 on CUDA, with a loss scaler for fp16; fp32 on CPU). The data stream is ours, not a sharded
DataLoader (`data.ExampleOrder`): step s reads stream positions [s·E, (s+1)·E), E = batch × grad-accum × processes,
and process p takes micro-batches p·g … p·g + g − 1 of them. Masking and dropout are seeded by the stream position of
the micro-batch, so N processes × grad-accum g compute what 1 process × N·g computes, and a resumed run continues
bit for bit (`checkpoint.py`). Validation (`validation.py`) reports the held-out loss at random and at fixed λ.

With accelerate's FSDP settings (`accelerate launch --config_file dllm_peft/accelerate_configs/fsdp_llada_8b.yaml`)
the frozen base is sharded instead of replicated (`sharding.py`, FSDP2): same loop, same data stream, same results;
the model is not handed to `accelerator.prepare`, checkpoints gather the adapter's tensors from every process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType

from ..adapters.base import adapter_state_dict, inject, trainable_parameters
from ..adapters.files import load_adapter, read_adapter, save_adapter
from ..adapters.options import train_method_config
from ..adapters.registry import get_method
from ..config import SamplerConfig, TrainConfig
from ..data.records import (
    ExampleOrder,
    LengthReport,
    collate,
    derived_seed,
    response_regions,
)
from ..diffusion.conditioning import (
    ROUTER_ATTRIBUTE,
    enable_gradient_checkpointing,
    find_router,
)
from ..diffusion.loss import masked_diffusion_loss
from ..diffusion.schedule import covers, sampler_noise_levels
from ..errors import DllmPeftError
from ..models import load_backbone, resolve_device
from ..outputs import storage_errors
from .checkpoint import (
    TrainingState,
    check_output,
    finish_run,
    gathered_state,
    latest_checkpoint,
    restore_replaced_run,
    resume_checkpoint,
    save_checkpoint,
    start_run,
)
from .metrics import MetricsLog
from .sharding import (
    clip_grad_norm,
    fsdp_requested,
    full_tensors,
    gather_root,
    gradient_sync,
    shard,
)
from .validation import (
    TrainingData,
    ValidationReport,
    batch_padding,
    load_training_data,
    validate,
)

WARMUP_RATIO = 0.05
GRAD_CLIP = 1.0
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.05
EPSILON = 1e-8


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    lr: float
    tokens_per_second: float
    epoch: float = 0.0
    grad_norm: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataReport:
    """What the run trains on, reported before the first step."""

    train: int
    validation: int
    validation_origin: str
    lengths: LengthReport
    steps: int
    examples_per_step: int
    processes: int
    sharded: bool = False  # the frozen base is sharded across the processes (FSDP)


@dataclasses.dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


@dataclasses.dataclass(frozen=True)
class Resumed:
    step: int
    checkpoint: Path | None  # None: the run had no checkpoint yet and starts again from step 0
    damaged: tuple[tuple[Path, str], ...] = ()  # newer checkpoints that could not be read (skipped, then removed)


@dataclasses.dataclass(frozen=True)
class NoiseLevelCoverage:
    """Before the first step: whether the λ values training will route contain those the sampler routes by default.

    The sampler's λ grid is k / gen_length (default settings: `SamplerConfig()`). Under `--noise-draw continuous`
    training routes its draw t, dense in (0, 1], so every sampler λ lies within the trained range and nothing is
    missing. Under `grid` training routes k / L for the response-region lengths L of its batches; `missing` lists the
    sampler's λ that no training batch can route: the noise-conditioned adapter (NaRA's hypernetwork) never trains
    there and the sampler extrapolates.
    """

    gen_length: int
    missing: list[float]  # sampler λ values training never routes (empty: covered)
    response_lengths: list[int]  # distinct L of the training batches, at most the 8 most common
    noise_draw: str = "grid"

    def metrics(self) -> dict:
        return {"sampler_gen_length": self.gen_length, "missing_sampler_noise_levels": self.missing,
                "response_lengths": self.response_lengths, "noise_draw": self.noise_draw}


TrainReport = DataReport | ValidationReport | CheckpointSaved | Resumed | NoiseLevelCoverage


@dataclasses.dataclass(frozen=True)
class TrainResult:
    output: Path
    losses: list[float]  # every step of the run, those before a resume included
    trainable_parameters: int
    examples: int
    overlong: int
    validation: list[ValidationReport]
    main_process: bool  # False in the other processes of `accelerate launch`: they write and show nothing


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a complete step; `checkpoint` holds that step (None before step 1)."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"stopped after step {step}")
        self.step, self.checkpoint = step, checkpoint


def learning_rate(step: int, max_steps: int, peak: float, warmup_ratio: float = WARMUP_RATIO) -> float:
    """Linear warm-up to `peak` over the first `warmup_ratio` of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(warmup_ratio * max_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def total_steps(config: TrainConfig, train_examples: int, examples_per_step: int) -> int:
    """Optimizer steps of the run: --epochs over the data (at least one step), capped by --max-steps."""
    if config.epochs is None:
        return config.max_steps
    steps = max(1, math.ceil(config.epochs * train_examples / examples_per_step))
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def train(
    config: TrainConfig,
    on_progress: Callable[[TrainProgress], None] | None = None,
    on_report: Callable[[TrainReport], None] | None = None,
) -> TrainResult:
    """Fine-tune an adapter on `config.data` and write it to `config.output` (see the module docstring)."""
    resume_from = check_output(config)  # before any loading: a refused --output costs nothing
    accelerator = _accelerator(config)
    is_main = accelerator.is_main_process
    report = on_report if (on_report is not None and is_main) else (lambda _: None)
    progress = on_progress if (on_progress is not None and is_main) else (lambda _: None)

    sharded = fsdp_requested() and torch.distributed.is_initialized()
    # Under FSDP the model is read on the CPU and moved to the device unit by unit while it is sharded.
    load_device = "cpu" if sharded else str(accelerator.device)
    backbone = load_backbone(config.model, config.dtype, load_device, config.trust_remote_code)
    data = load_training_data(config, backbone)
    processes, rank = accelerator.num_processes, accelerator.process_index
    examples_per_step = config.batch_size * config.grad_accum * processes
    steps = total_steps(config, len(data.train), examples_per_step)

    torch.manual_seed(config.seed)  # the adapter's initial values
    method = get_method(config.method)
    _start_adapter(config, backbone)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(backbone.model)  # after inject: it installs the λ-preserving context
    if sharded:
        shard(backbone.model, accelerator.device)  # before the optimizer: the parameters become DTensors
    parameters = trainable_parameters(backbone.model)
    groups = parameter_groups(backbone.model, parameters, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPSILON)
    state = TrainingState(step=0, examples_seen=0, losses=[], validation=[], data_fingerprint=data.fingerprint)
    damaged: tuple[tuple[Path, str], ...] = ()
    if resume_from is not None:
        resume_from, state, damaged = resume_checkpoint(config.output, backbone, optimizer)
        _check_resumable(config, state, data, steps)
    model = backbone.model
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.scaler is not None and state.scaler:
        accelerator.scaler.load_state_dict(state.scaler)
    trainer = _on_wrapper(backbone, model)

    accelerator.wait_for_everyone()  # every process has checked --output before rank 0 writes into it
    if is_main:  # a run resumed before its first checkpoint restarts
        start_run(config, resuming=resume_from is not None, damaged=tuple(path for path, _ in damaged))
    if config.resume:
        report(Resumed(state.step, resume_from, damaged))
    lengths = data.lengths
    report(DataReport(
        len(data.train), len(data.validation), data.validation_origin, lengths, steps, examples_per_step, processes, sharded
    ))
    record = {"data": config.data, "seed": config.seed, "lr": config.lr, "recipe": config.recipe, "steps": steps,
              "hypernetwork_lr": config.hypernetwork_lr}
    order = ExampleOrder(len(data.train), config.seed)
    padding = batch_padding(config)
    coverage = noise_level_coverage(config, data, order, steps, examples_per_step)
    report(coverage)
    routed: dict[float, int] = {}  # λ → examples routed at it by this process (this session of the run)
    digits = 3 if config.noise_draw == "continuous" else 6
    device = accelerator.device
    model.train()

    resume_step = state.step if resume_from is not None else None
    metrics = MetricsLog(config.output, resume_step) if is_main else contextlib.nullcontext()
    with _replaced_run_kept(config, is_main), _StopRequests() as stop, metrics as log:
        def checkpoint() -> Path | None:
            if state.step == 0:
                return latest_checkpoint(config.output)
            gathered = gathered_state(backbone, optimizer)  # every process takes part: a collective under FSDP
            if not is_main:
                return latest_checkpoint(config.output)
            state.scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            path = save_checkpoint(config.output, backbone, gathered, state, config.keep_checkpoints, record)
            report(CheckpointSaved(state.step, path))
            return path

        def run_validation() -> None:
            if not data.validation:
                return
            result = validate(backbone, data.validation, config, accelerator, state.step)
            state.validation.append(dataclasses.asdict(result))
            if log is not None:
                log.write("validation", state.step, result.metrics())
            report(result)

        if log is not None and coverage.missing:
            log.write("warning", state.step, {"noise_level_coverage": coverage.metrics()})
        if state.step == 0:
            run_validation()  # the base model's loss: where the adapter starts from
        # A checkpoint due after step N is written during step N + 1, once that step's loss and gradients are known
        # to be finite and before its update: a state that leads straight to NaN (too high an lr) is never saved.
        save_due = False
        while state.step < steps:
            if stop.agreed(accelerator):
                raise TrainingInterrupted(state.step, checkpoint())
            started = time.perf_counter()
            lr = learning_rate(state.step, steps, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_ratio"]  # the hypernetwork's peak is --hypernetwork-lr
            first = state.examples_seen + rank * config.grad_accum * config.batch_size
            local_loss, local_tokens = 0.0, 0
            for micro in range(config.grad_accum):
                start = first + micro * config.batch_size  # stream position of this micro-batch
                examples = [data.train[index] for index in order.indices(start, config.batch_size)]
                batch = collate(examples, backbone.eos_id, **padding)
                torch.manual_seed(derived_seed(config.seed, "dropout", start))
                generator = torch.Generator(device=device).manual_seed(derived_seed(config.seed, "mask", start))
                last = micro == config.grad_accum - 1
                with _micro_batch(accelerator, model, sharded, last):
                    gather_root(model)
                    out = masked_diffusion_loss(
                        trainer,
                        batch.input_ids.to(device),
                        batch.response_mask.to(device),
                        batch.attention_mask.to(device),
                        generator=generator,
                        noise_draw=config.noise_draw,
                    )
                    objective = out.loss
                    if method.regularization is not None:  # e.g. LoRA-Diffusion's rank and orthogonality terms
                        objective = objective + method.regularization(backbone.model)
                    accelerator.backward(objective / config.grad_accum)
                for level in out.noise_level.tolist():
                    level = round(level, digits)  # a continuous λ is binned to 1e-3
                    routed[level] = routed.get(level, 0) + 1
                local_loss += out.loss.item() / config.grad_accum
                local_tokens += batch.tokens
            totals = accelerator.reduce(torch.tensor([local_loss, local_tokens], device=device, dtype=torch.float64))
            step_loss, tokens = totals[0].item() / processes, int(totals[1].item())
            if not math.isfinite(step_loss):
                raise DllmPeftError(_diverged_message(config, step_loss, state.step + 1))
            if sharded:
                grad_norm = clip_grad_norm(parameters, GRAD_CLIP)
            else:
                grad_norm = float(accelerator.clip_grad_norm_(parameters, GRAD_CLIP))
            if not math.isfinite(grad_norm):  # this update would poison the weights: never applied, never saved
                raise DllmPeftError(_diverged_message(config, grad_norm, state.step + 1, "gradient norm"))
            if save_due:
                checkpoint()  # the weights are still those after step N: backward changed only the gradients
                save_due = False
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = max(time.perf_counter() - started, 1e-9)

            state.step += 1
            state.examples_seen += examples_per_step
            state.losses.append(step_loss)
            epoch = state.examples_seen / len(data.train)
            if log is not None:
                values = {"loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}
                values |= {"tokens_per_second": tokens / elapsed, "examples_seen": state.examples_seen, "epoch": epoch}
                log.write("train", state.step, values)
            progress(TrainProgress(state.step, steps, step_loss, lr, tokens / elapsed, epoch, grad_norm))
            if config.eval_every and state.step % config.eval_every == 0 or state.step == steps:
                run_validation()
            if config.save_every and state.step % config.save_every == 0:
                if state.step == steps:
                    checkpoint()  # no next step to wait for (and a run killed before its adapter resumes from it)
                else:
                    save_due = True

        histogram = _gathered_histogram(accelerator, routed)
        if log is not None:
            values = {"histogram": {f"{level:g}": count for level, count in sorted(histogram.items())}}
            log.write("noise_levels", state.step, values | coverage.metrics())

    tensors = full_tensors(adapter_state_dict(backbone.model))  # every process: a collective under FSDP
    if is_main:
        final = {**record, "validation": state.validation[-1] if state.validation else None}
        with storage_errors(f"writing the adapter to {config.output}", _disk_advice(config)):
            save_adapter(backbone, config.output, extra={"training": final}, tensors=tensors)
        finish_run(config.output)
    accelerator.wait_for_everyone()
    return TrainResult(
        output=Path(config.output),
        losses=state.losses,
        trainable_parameters=sum(p.numel() for p in parameters),
        examples=len(data.train),
        overlong=data.lengths.overlong,
        validation=[ValidationReport.from_dict(v) for v in state.validation],
        main_process=is_main,
    )

def _start_adapter(config: TrainConfig, backbone) -> None:
    """Inject a fresh adapter of --method, or the one of --init-adapter (its own settings, its trained values)."""
    if config.init_adapter is None:
        method = get_method(config.method)
        inject(backbone.model, train_method_config(config), method.layer_class, backbone.default_targets)
        return
    stored = read_adapter(config.init_adapter)[0].get("method")
    if stored != config.method:
        raise DllmPeftError(
            f"--init-adapter {config.init_adapter!r} holds a {stored} adapter but --method is {config.method}; "
            f"pass --method {stored} to continue training it"
        )
    load_adapter(backbone, config.init_adapter)


def parameter_groups(model, parameters: list, config: TrainConfig) -> list[dict]:
    """AdamW groups: the noise-conditioned modules (every trainable parameter of the noise router: NaRA's and
    NaRA-DoRA's hypernetwork, NaRA-C's core) at --hypernetwork-lr, everything else at --lr. `lr_ratio` scales the
    schedule of `learning_rate` per group."""
    router = find_router(model)
    conditioned = {id(p) for p in router.parameters()} if router is not None else set()
    ratio = (config.hypernetwork_lr or config.lr) / config.lr
    noise = [p for p in parameters if id(p) in conditioned]
    rest = [p for p in parameters if id(p) not in conditioned]
    groups = [{"params": rest, "lr_ratio": 1.0}] if rest else []
    return groups + ([{"params": noise, "lr_ratio": ratio, "lr": config.lr * ratio}] if noise else [])


def noise_level_coverage(
    config: TrainConfig, data: TrainingData, order: ExampleOrder, steps: int, examples_per_step: int
) -> NoiseLevelCoverage:
    """Which λ of the default sampler (`SamplerConfig()`) the run's batches cannot route (see `NoiseLevelCoverage`)."""
    padding = batch_padding(config)
    if padding["pad_to"] is None and padding["canvas"] is None:  # --padding longest: L depends on the batch
        lengths = collections.Counter()
        for position in range(0, steps * examples_per_step, config.batch_size):
            batch = [data.train[index] for index in order.indices(position, config.batch_size)]
            lengths.update(response_regions(batch, **padding))
    else:  # L is a property of each example alone
        lengths = collections.Counter(response_regions([example], **padding)[0] for example in data.train)
    sampler = SamplerConfig()
    levels = sampler_noise_levels(sampler.gen_length, sampler.block_length, sampler.steps)
    common = [length for length, _ in lengths.most_common(8)]
    missing = [] if config.noise_draw == "continuous" else covers(list(lengths), levels)  # continuous: dense λ
    return NoiseLevelCoverage(sampler.gen_length, missing, common, config.noise_draw)


def _gathered_histogram(accelerator: Accelerator, routed: dict[float, int]) -> dict[float, int]:
    """The λ histogram of every process together."""
    if accelerator.num_processes == 1:
        return routed
    from accelerate.utils import gather_object

    total: dict[float, int] = {}
    for part in gather_object([routed]):
        for level, count in part.items():
            total[level] = total.get(level, 0) + count
    return total


def _accelerator(config: TrainConfig) -> Accelerator:
    """The process group (under `accelerate launch`), the device and the autocast of this run."""
    device = resolve_device(config.device)  # a CUDA request on a machine without one fails here
    if config.precision == "auto":
        cuda = device.type == "cuda"
        mixed = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    elif config.precision == "fp32":
        mixed = "no"
    elif device.type != "cuda":
        raise DllmPeftError(f"--precision {config.precision} needs a CUDA device; on CPU train with --precision fp32")
    else:
        mixed = config.precision
    if fsdp_requested() and mixed == "fp16":
        raise DllmPeftError("--precision fp16 is not supported with FSDP (no sharded loss scaler); use bf16")
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise DllmPeftError(
            f"dllm-peft train runs DDP or FSDP under accelerate launch, not {accelerator.distributed_type.value}; "
            "launch with an FSDP config (dllm_peft/accelerate_configs/fsdp_llada_8b.yaml) instead"
        )
    return accelerator


def _micro_batch(accelerator: Accelerator, model, sharded: bool, last: bool) -> contextlib.ExitStack:
    """Gradients are reduced after the last micro-batch only; a sharded model also needs the autocast here, which
    `accelerator.prepare` adds to an unsharded model's forward."""
    stack = contextlib.ExitStack()
    if sharded:
        stack.enter_context(gradient_sync(model, last))
        stack.enter_context(accelerator.autocast())
    elif not last:
        stack.enter_context(accelerator.no_sync(model))
    return stack


def _on_wrapper(backbone, model):
    """The backbone seen through the prepared model (DDP wrapper); λ routing still finds the router.

    DDP does not forward attribute lookups to the module it wraps, so the router is also set on the wrapper.
    """
    if model is backbone.model:
        return backbone
    router = find_router(backbone.model)
    if router is not None:
        object.__setattr__(model, ROUTER_ATTRIBUTE, router)  # a plain attribute: not a second registration
    return dataclasses.replace(backbone, model=model)


def _check_resumable(config: TrainConfig, state: TrainingState, data: TrainingData, steps: int) -> None:
    if state.data_fingerprint != data.fingerprint:
        raise DllmPeftError(
            f"the training data of {config.data!r} changed since the checkpoint in {config.output!r}; "
            "resume with the same data or start a new run with --overwrite"
        )
    if state.step > steps:  # == steps: killed after its last checkpoint; the adapter is then written from it
        raise DllmPeftError(
            f"the checkpoint in {config.output!r} is at step {state.step}, past the {steps} steps now asked for; "
            f"resume with --max-steps {state.step} or more"
        )


def _diverged_message(config: TrainConfig, value: float, step: int, what: str = "loss") -> str:
    """Every saved checkpoint comes from a step whose loss and gradients were finite: the newest one is good."""
    checkpoint = latest_checkpoint(config.output)
    kept = (
        f"the last good checkpoint is {checkpoint} (continue from it with --resume and a lower --lr)"
        if checkpoint is not None
        else "no adapter was written"
    )
    return f"the {what} became {value} at step {step}, so that step was not applied; lower --lr; {kept}"


def _disk_advice(config: TrainConfig) -> str:
    checkpoint = latest_checkpoint(config.output)
    if checkpoint is None:
        return "free space and start the run again"
    return f"free space and finish from {checkpoint} with --resume (same --output)"


@contextlib.contextmanager
def _replaced_run_kept(config: TrainConfig, is_main: bool):
    """An --overwrite run that fails before its first checkpoint puts the run it replaced back (`checkpoint.py`)."""
    try:
        yield
    except BaseException:
        if is_main and config.overwrite:
            restore_replaced_run(config.output)
        raise


class _StopRequests:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step (and save); a second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop: all processes must leave the loop at the same step."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag).item() > 0)

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
