"""`dllm-peft sample`: answer prompts with the masked-diffusion sampler (LLaDA, Fast-dLLM, EB-sampler).

Flags → `SampleConfig` (what to run on, where to write) + `SamplerConfig` (how to decode) → `sample()` per batch of
prompts. When stderr is a terminal, a live view shows each canvas filling in (masks drawn as ░). Results go to stdout,
or with `--output` to a JSONL file (one record per prompt: prompt, text, steps, tokens/s), written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..atomic import atomic_write_bytes
from ..config import DEFAULT_MODEL, SampleConfig, SamplerConfig, help_for
from ..errors import DllmPeftError
from .app import app
from .help import (
    CacheName,
    ChatTemplate,
    DtypeName,
    EosSuppression,
    HelpCommand,
    RemaskingName,
    complete_device,
)

if TYPE_CHECKING:  # torch and the model layers load when a command runs, not for --help
    import torch

    from ..diffusion.sampler import SampleResult
    from ..models.backbone import Backbone
from .console import err, out

MASK_GLYPH = "░"
SAMPLER_FIELDS = {field.name for field in dataclasses.fields(SamplerConfig)}
H = lambda name: help_for(SamplerConfig if name in SAMPLER_FIELDS else SampleConfig, name)  # noqa: E731
S = {field.name: field.default for field in dataclasses.fields(SampleConfig)}  # defaults (no prompt to validate)
D = SamplerConfig()


@app.command("sample", cls=HelpCommand)
def sample_command(
    model: str = typer.Option(None, help=H("model")),
    adapter: str = typer.Option(None, help=H("adapter")),
    prompt: str = typer.Option(None, help=H("prompt")),
    prompts_file: str = typer.Option(None, help=H("prompts_file")),
    output: str = typer.Option(None, help=H("output")),
    seed: int = typer.Option(S["seed"], help=H("seed")),
    batch_size: int = typer.Option(S["batch_size"], help=H("batch_size")),
    chat_template: ChatTemplate = typer.Option(S["chat_template"], help=H("chat_template")),
    dtype: DtypeName = typer.Option(S["dtype"], help=H("dtype")),
    device: str = typer.Option(S["device"], help=H("device"), autocompletion=complete_device),
    gen_length: int = typer.Option(D.gen_length, help=H("gen_length")),
    steps: int = typer.Option(None, help=H("steps") + " Default: --gen-length.", show_default=False),
    block_length: int = typer.Option(None, help=H("block_length") + " Default: --gen-length.", show_default=False),
    remasking: RemaskingName = typer.Option(D.remasking, help=H("remasking")),
    temperature: float = typer.Option(D.temperature, help=H("temperature")),
    cfg_scale: float = typer.Option(D.cfg_scale, help=H("cfg_scale")),
    threshold: float = typer.Option(None, help=H("threshold")),
    cache: CacheName = typer.Option(D.cache, help=H("cache")),
    cache_refresh: int = typer.Option(D.cache_refresh, help=H("cache_refresh")),
    entropy_bound: float = typer.Option(None, help=H("entropy_bound")),
    eos_suppression: EosSuppression = typer.Option(D.eos_suppression, help=H("eos_suppression")),
    schedule: str = typer.Option(D.schedule, help=H("schedule")),
    alg: str = typer.Option(D.alg, help=H("alg")),
    alg_temp: float = typer.Option(None, help=H("alg_temp")),
    top_p: float = typer.Option(None, help=H("top_p")),
    top_k: int = typer.Option(None, help=H("top_k")),
    stop_at_eos: bool = typer.Option(D.stop_at_eos, help=H("stop_at_eos")),
) -> None:
    """Generate text with the masked-diffusion sampler (live view in a terminal; JSONL with --output)."""
    flags = dict(locals())
    # LLaDA's own default: one block as long as the generation, one step per token
    flags["block_length"] = block_length or gen_length
    flags["steps"] = steps or gen_length
    sampler_config = SamplerConfig(**{name: value for name, value in flags.items() if name in SAMPLER_FIELDS})
    config = SampleConfig(**{name: value for name, value in flags.items() if name not in SAMPLER_FIELDS})
    from ..data.records import format_prompt  # torch loads with the model, not for --help
    from ..diffusion.sampler import sample
    from ..outputs import check_output_path

    if config.output is not None:
        check_output_path(config.output, "--output", "file")  # before any work

    texts = read_prompts(config)
    backbone = _load(config)
    prompts = [backbone.encode(format_prompt(backbone.tokenizer, text, config.chat_template)) for text in texts]
    records = []
    for first in range(0, len(prompts), config.batch_size):
        batch = prompts[first : first + config.batch_size]
        generators = [_generator(config.seed + first + index, backbone.device) for index in range(len(batch))]
        with LiveCanvas(backbone, first, len(prompts), sampler_config, err if err.is_terminal else None) as live:
            result = sample(backbone, batch, sampler_config, generators, on_step=live.update)
        records += _records(backbone, texts[first : first + len(batch)], result)
    _report(config, records)


def read_prompts(config: SampleConfig) -> list[str]:
    """The prompt texts: --prompt, or the records / lines of --prompts-file."""
    if config.prompt is not None:
        return [config.prompt]
    path = Path(config.prompts_file)
    if not path.is_file():
        raise DllmPeftError(f"prompts file {config.prompts_file!r} does not exist")
    from ..data.records import read_json_records, read_utf8

    if path.suffix in (".json", ".jsonl"):
        records = read_json_records(path)  # the training data's reader: one sentence per malformed line
        prompts = [_prompt_of(record, f"{path} record {number}") for number, record in enumerate(records, start=1)]
    else:
        prompts = read_utf8(path).rstrip("\r\n").splitlines()
        for number, line in enumerate(prompts, start=1):
            if not line.strip():
                raise DllmPeftError(f"{path}:{number}: the prompt is empty; remove the blank line")
    if not prompts:
        raise DllmPeftError(f"prompts file {config.prompts_file!r} holds no prompts")
    return prompts


def _prompt_of(record, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        present = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise DllmPeftError(f"{where}: expected an object with a 'prompt' string (present: {present})")
    if not record["prompt"].strip():
        raise DllmPeftError(f"{where}: the prompt is empty; give it some text")
    return record["prompt"]


def _load(config: SampleConfig) -> Backbone:
    """The backbone (named, the adapter's base, or the default) with the adapter loaded into it."""
    from ..adapters.files import load_adapter, read_adapter
    from ..models import load_backbone

    name = config.model
    if name is None:
        name = read_adapter(config.adapter)[0].get("base_model", DEFAULT_MODEL) if config.adapter else DEFAULT_MODEL
    with err.status(f"loading {name} …"):
        backbone = load_backbone(name, dtype=config.dtype, device=config.device)
        if config.adapter:
            load_adapter(backbone, config.adapter)
    backbone.model.eval()
    return backbone


def _generator(seed: int, device: torch.device) -> torch.Generator:
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def _records(backbone: Backbone, texts: list[str], result: SampleResult) -> list[dict]:
    records = []
    for index, text in enumerate(texts):
        seconds = max(result.seconds[index], 1e-9)
        records.append(
            {
                "prompt": text,
                "text": backbone.decode(result.tokens[index]),
                "steps": result.steps[index],
                "tokens": len(result.tokens[index]),
                "seconds": round(seconds, 4),
                "tokens_per_second": round(result.decoded[index] / seconds, 2),
            }
        )
    return records


def _report(config: SampleConfig, records: list[dict]) -> None:
    if config.output is not None:
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        from ..outputs import storage_errors

        with storage_errors(f"writing {config.output}", "free space or choose another --output"):
            atomic_write_bytes(Path(config.output), lines.encode("utf-8"))
    else:
        for number, record in enumerate(records, start=1):
            if len(records) > 1:
                out.print(f"[bold]── {number} ──[/]")
            out.print(Text(displayable(record["text"])), soft_wrap=True)
    mean_steps = sum(record["steps"] for record in records) / len(records)
    speed = sum(record["tokens_per_second"] for record in records) / len(records)
    where = f"; wrote {config.output}" if config.output is not None else ""
    err.print(
        f"[green]✓[/] {len(records)} prompt(s), {mean_steps:g} steps each on average, {speed:,.0f} tokens/s{where}",
        highlight=False,
    )


class LiveCanvas:
    """A rich Live view of the canvases of one batch, redrawn after every step; does nothing without a console."""

    def __init__(self, backbone: Backbone, first: int, total: int, config: SamplerConfig, console: Console | None):
        self.backbone, self.first, self.total, self.config = backbone, first, total, config
        self.live = Live(console=console, transient=True, auto_refresh=False) if console is not None else None

    def __enter__(self) -> LiveCanvas:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.live is not None:
            self.live.__exit__(*exc_info)

    def update(self, canvas: torch.Tensor, step: int) -> None:
        if self.live is None:
            return
        response = canvas[:, canvas.shape[1] - self.config.gen_length :].tolist()
        lines = [Text(f"step {step}", style="dim")]
        for row, ids in enumerate(response):
            label = Text(f"{self.first + row + 1}/{self.total} ", style="bold")
            lines.append(label + Text(displayable(render_response(self.backbone, ids))))
        self.live.update(Group(*lines), refresh=True)


def render_response(backbone: Backbone, ids: list[int]) -> str:
    """Decoded text with one placeholder per still-masked position."""
    pieces, run = [], []
    for token in ids + [backbone.mask_id]:  # the trailing mask flushes the last run
        if token == backbone.mask_id:
            if run:
                pieces.append(backbone.decode(run))
                run = []
            pieces.append(MASK_GLYPH)
        else:
            run.append(token)
    return "".join(pieces)[:-1]


def displayable(text: str) -> str:
    """`text` safe for a terminal: control characters other than newline and tab (a model may emit ESC) become �."""
    return "".join("\ufffd" if unicodedata.category(ch) == "Cc" and ch not in "\n\t" else ch for ch in text)
