"""The run directory: who may write into `--output`, resumable checkpoints, and how a run is resumed.

Layout of a run directory:

    out/train_config.json                      the run's resolved settings (written when training starts)
    out/metrics.jsonl                          one JSON object per step and per validation (`metrics.py`)
    out/checkpoints/step-N/                    resumable state after optimizer step N:
        dllm_peft_adapter.{json,safetensors}             a loadable adapter (`adapters.files.load_adapter` reads it)
        optimizer.safetensors                             AdamW moments and step counts
        trainer_state.json                                step, examples read, loss history, optimizer groups, …
    out/dllm_peft_adapter.{json,safetensors}           the final adapter, written only when the run completes

A checkpoint is written into a hidden temporary directory and renamed into place (atomic on POSIX), so a run killed
at any moment leaves complete checkpoints only; leftovers of a killed write (`.step-*.partial`, `.*.tmp`) are removed
on the next start. A checkpoint is saved only from a state that is known good: the loop writes the checkpoint due after
step N during step N + 1, once that step's loss and gradients are finite and before its update, and never applies a
step whose loss or gradients are not finite; the adapter's tensors are also checked finite before a save. Resuming reads the newest checkpoint that loads completely: a damaged one (a file
missing, `trainer_state.json` not JSON, a truncated tensor file) is reported, skipped and removed. A full disk while
saving is one sentence; the previous checkpoints stay as they were.

`--overwrite` moves the previous run's files into `out/.replaced-run/` instead of deleting them; they are deleted
once the new run writes its adapter, and moved back if the new run fails before its first checkpoint.

Why no random-number-generator state is stored: every random draw of the loop is a pure function of the seed and of
where it happens (`data.derived_seed`): the data order of epoch e, the masking and the dropout of the micro-batch
that starts at stream position i. The number of examples read is therefore the whole RNG state, and it also makes a
run split across processes draw what a single process draws. The learning rate is a pure function of the step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..adapters.base import adapter_state_dict
from ..adapters.files import (
    CONFIG_FILE,
    LEGACY_CONFIG_FILE,
    LEGACY_WEIGHTS_FILE,
    WEIGHTS_FILE,
    atomic_save_tensors,
    atomic_write_bytes,
    read_adapter,
    save_adapter,
)
from ..atomic import make_staging_dir
from ..config import TrainConfig
from ..errors import DllmPeftError
from ..models.backbone import Backbone
from ..outputs import check_output_path, storage_errors
from .sharding import full_tensors, shard_like

RUN_FILE = "train_config.json"
CHECKPOINTS = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
RUN_OUTPUTS = (
    CONFIG_FILE, WEIGHTS_FILE, LEGACY_CONFIG_FILE, LEGACY_WEIGHTS_FILE, RUN_FILE, CHECKPOINTS, "metrics.jsonl",
    "tensorboard",
)
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE)
REPLACED_RUN = ".replaced-run"  # the run an --overwrite replaces, kept until the new run has written its adapter

# Settings that define what is trained on what: a resumed run must keep them (others, such as --save-every, may change).
SAME_RUN_FIELDS = (
    "method", "model", "data", "rank", "eta", "dropout", "targets", "max_length", "overlong", "chat_template",
    "prompt_field", "response_field", "val_data", "val_size", "seed", "adapter_option",
    "init_adapter",
)


@dataclasses.dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs."""

    step: int  # optimizer steps done
    examples_seen: int  # stream position: examples read by all processes together
    losses: list[float]  # training loss of every step so far
    validation: list[dict[str, Any]]  # every validation so far (`ValidationReport` as a dict)
    data_fingerprint: str
    scaler: dict[str, Any] | None = None  # fp16 loss-scaler state


# -- the output directory policy -------------------------------------------------------------------------------------
def read_run_config(output: str | Path) -> dict[str, Any] | None:
    """The settings of the run in `output`, or None when it holds no run."""
    path = Path(output) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DllmPeftError(f"{path} is damaged (not JSON); pass --overwrite to start the run again") from None


def check_output(config: TrainConfig) -> Path | None:
    """Apply the output policy before anything is loaded. Returns the checkpoints directory to resume from (None: the
    run starts from step 0).

    A directory holding another run or an adapter is refused unless `--resume` (continue that run) or `--overwrite`
    (replace it, once the new run has loaded its model and data) is given; files that are not ours are left alone.
    """
    output = check_output_path(config.output, "--output", "directory")
    run = read_run_config(output)
    if config.resume:
        if run is None:
            raise DllmPeftError(f"{config.output!r} holds no training run to resume; drop --resume to start one")
        for name in SAME_RUN_FIELDS:
            saved = tuple(run[name]) if isinstance(run.get(name), list) else run.get(name)  # JSON has no tuples
            if name in run and saved != getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise DllmPeftError(
                    f"{flag} {getattr(config, name)!r} differs from the run being resumed in {config.output!r} "
                    f"({saved!r}); resume with its settings or train into another --output"
                )
        root = output / CHECKPOINTS
        return root if root.is_dir() and any(root.glob("step-*")) else None  # which one loads: `resume_checkpoint`
    if config.overwrite:
        return None
    if run is not None:
        raise DllmPeftError(
            f"{config.output!r} already holds a {run.get('method')} run on {run.get('data')}; pass --overwrite to "
            "replace it, --resume to continue it, or choose another --output"
        )
    if any((output / name).exists() for name in (CONFIG_FILE, LEGACY_CONFIG_FILE)):
        raise DllmPeftError(f"{config.output!r} already holds an adapter; pass --overwrite or choose another --output")
    return None


def start_run(config: TrainConfig, resuming: bool, damaged: tuple[Path, ...] = ()) -> None:
    """Set aside what an overwritten run left, clean leftovers of killed writes and record the settings of this run
    (main process only). `damaged`: checkpoints that failed to load on resume, removed so that they are written anew.
    """
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if not resuming:
        present = [output / name for name in RUN_OUTPUTS if (output / name).exists()]
        backup = output / REPLACED_RUN
        if config.overwrite and present and not backup.exists():
            backup.mkdir()
            for target in present:
                os.replace(target, backup / target.name)
        else:  # no run, or an --overwrite run that never finished while the replaced one is still kept
            for target in present:
                _remove(target)
    for path in damaged:
        shutil.rmtree(path, ignore_errors=True)
    for name in RUN_OUTPUTS:  # half-written files (or staging directories) of a killed atomic write
        for leftover in output.glob(f".{name}.*.tmp"):
            _remove(leftover)
    settings = {**dataclasses.asdict(config), "resume": False, "overwrite": False}
    atomic_write_bytes(output / RUN_FILE, (json.dumps(settings, indent=2) + "\n").encode())
    _remove_partial_checkpoints(output / CHECKPOINTS)


def finish_run(output: str | Path) -> None:
    """The new run has written its adapter: the run it replaced goes."""
    shutil.rmtree(Path(output) / REPLACED_RUN, ignore_errors=True)


def restore_replaced_run(output: str | Path) -> bool:
    """A new --overwrite run failed before its first checkpoint: put the run it replaced back. Returns whether it did."""
    output = Path(output)
    backup = output / REPLACED_RUN
    if not backup.is_dir() or checkpoint_steps(output):
        return False
    for name in RUN_OUTPUTS:
        _remove(output / name)
    for entry in backup.iterdir():
        os.replace(entry, output / entry.name)
    backup.rmdir()
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# -- checkpoints -----------------------------------------------------------------------------------------------------
def checkpoint_steps(output: str | Path) -> list[int]:
    """The steps of the complete checkpoints in `output`, oldest first."""
    root = Path(output) / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = []
    for path in root.glob("step-*"):
        suffix = path.name[len("step-") :]
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            steps.append(int(suffix))
    return sorted(steps)


def latest_checkpoint(output: str | Path) -> Path | None:
    steps = checkpoint_steps(output)
    return Path(output) / CHECKPOINTS / f"step-{steps[-1]}" if steps else None


def gathered_state(backbone: Backbone, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(adapter tensors, optimizer state_dict), whole: under FSDP a collective that every process must call."""
    optimizer_state = optimizer.state_dict()  # its per-parameter dicts are the live ones: replaced, not updated
    for index, values in optimizer_state["state"].items():  # the same order on every process
        tensors = full_tensors({key: value for key, value in values.items() if torch.is_tensor(value)})
        optimizer_state["state"][index] = {**values, **tensors}
    return full_tensors(adapter_state_dict(backbone.model)), optimizer_state


def save_checkpoint(
    output: str | Path,
    backbone: Backbone,
    gathered: tuple[dict[str, torch.Tensor], dict[str, Any]],
    state: TrainingState,
    keep: int,
    record: dict[str, Any],
) -> Path:
    """Write the state after step `state.step` atomically, then drop all but the `keep` newest checkpoints.

    Args:
        backbone: the backbone whose model carries the adapter (unwrapped, not the DDP wrapper).
        gathered: `gathered_state(backbone, optimizer)`.
        record: extra JSON stored with the adapter (the settings of the run).
    """
    root = Path(output) / CHECKPOINTS
    final = root / f"step-{state.step}"
    if final.exists():  # e.g. Ctrl-C right after a periodic save: that checkpoint is this state
        if all((final / name).is_file() for name in CHECKPOINT_FILES):
            return final
        shutil.rmtree(final)  # an incomplete one (damaged by hand): written anew
    adapter_tensors, optimizer_state = gathered
    bad = next((name for name, tensor in adapter_tensors.items() if not torch.isfinite(tensor).all()), None)
    if bad is not None:
        kept = latest_checkpoint(output)
        raise DllmPeftError(
            f"the adapter tensor {bad!r} is not finite after step {state.step}, so no checkpoint was saved; lower --lr"
            + (f" and continue from the last good checkpoint {kept} with --resume" if kept else "")
        )
    previous = latest_checkpoint(output)
    advice = (
        f"free space and continue from {previous} with --resume" if previous else "free space and start the run again"
    )
    with storage_errors(f"saving checkpoint step-{state.step} in {root}", advice):
        _write_checkpoint(root, final, backbone, adapter_tensors, optimizer_state, state, record)
    for old in checkpoint_steps(output)[:-keep]:
        shutil.rmtree(root / f"step-{old}", ignore_errors=True)
    return final


def _write_checkpoint(root, final, backbone, adapter_tensors, optimizer_state, state, record) -> None:
    root.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(root, prefix=f".step-{state.step}.", suffix=".partial")
    try:
        save_adapter(backbone, staging, extra={"training": {**record, "step": state.step}}, tensors=adapter_tensors)
        tensors, groups = _split_optimizer_state(optimizer_state)
        atomic_save_tensors(tensors, staging / OPTIMIZER_FILE, {})
        payload = {**dataclasses.asdict(state), "optimizer": groups}
        atomic_write_bytes(staging / STATE_FILE, (json.dumps(payload) + "\n").encode())
        for file in staging.iterdir():
            _fsync(file)
        os.replace(staging, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resume_checkpoint(
    output: str | Path, backbone: Backbone, optimizer: torch.optim.Optimizer
) -> tuple[Path, TrainingState, tuple[tuple[Path, str], ...]]:
    """Load the newest checkpoint of `output` that reads completely, skipping damaged ones.

    Returns:
        (its path, its state, ((damaged checkpoint, why), ...) newest first).
    """
    damaged = []
    root = Path(output) / CHECKPOINTS
    steps = sorted(int(path.name[5:]) for path in root.glob("step-*") if path.name[5:].isdigit() and path.is_dir())
    for step in reversed(steps):
        path = root / f"step-{step}"
        try:
            return path, load_checkpoint(path, backbone, optimizer), tuple(damaged)
        except _Damaged as error:
            damaged.append((path, str(error)))
    newest = damaged[0][0] if damaged else output
    raise DllmPeftError(
        f"no checkpoint in {str(output)!r} can be read ({newest} {damaged[0][1] if damaged else 'is missing'}); "
        "start the run again with --overwrite"
    )


class _Damaged(Exception):
    """A checkpoint that cannot be read whole (the message says why)."""


def load_checkpoint(path: Path, backbone: Backbone, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Load adapter tensors and optimizer state from checkpoint `path` into the live objects. Returns its state.

    Every file is read and checked before anything is loaded, so a damaged checkpoint leaves the live objects as
    they were. Under FSDP each process keeps its own shard of every tensor (the checkpoint holds them whole).

    Raises:
        _Damaged: a file is missing or unreadable.
    """
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise _Damaged(f"lacks {', '.join(missing)}")
    try:
        _, tensors = read_adapter(path)
        payload = json.loads((path / STATE_FILE).read_text())
        with safe_open(str(path / OPTIMIZER_FILE), framework="pt") as reader:
            optimizer_tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        loaded = _join_optimizer_state(optimizer_tensors, payload.pop("optimizer"))
        state = TrainingState(**payload)
    except DllmPeftError as error:
        raise _Damaged(str(error)) from None
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise _Damaged(f"has an unreadable {STATE_FILE} or {OPTIMIZER_FILE} ({type(error).__name__})") from None
    except Exception as error:  # safetensors raises its own type for a truncated file
        raise _Damaged(f"has an unreadable {OPTIMIZER_FILE} ({error})") from None
    expected = adapter_state_dict(backbone.model)
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise DllmPeftError(f"the adapter in {path} does not fit this model; resume with the run's own settings")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(shard_like(tensors[name], target))
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # state index → parameter
    for index, values in loaded["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                values[key] = shard_like(value, parameters[index])
    optimizer.load_state_dict(loaded)
    return state


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as (tensors for safetensors, JSON for the rest): no pickle."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], groups: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in groups["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    # JSON turned tuples (AdamW's betas) into lists
    param_groups = [
        {key: tuple(value) if isinstance(value, list) and key != "params" else value for key, value in group.items()}
        for group in groups["param_groups"]
    ]
    return {"state": state, "param_groups": param_groups}


def _remove_partial_checkpoints(root: Path) -> None:
    """Leftovers of a checkpoint write that was killed half-way (never a complete checkpoint)."""
    if root.is_dir():
        for leftover in root.glob(".step-*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
