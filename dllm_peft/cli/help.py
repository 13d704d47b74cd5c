"""`--help` that a person can read at 80 columns: options grouped into panels, choices as real choices.

The panels are a mapping here (flag name → panel) rather than a property of each config field, so that a new field in
`config.py` needs no edit in this file: a flag the mapping does not name lands in its command's last panel, `Other`.
`HelpCommand` renders each panel as a two-column table whose name column is as wide as the longest flag name, so a
name is never cut ("…"); help text wraps in the second column; choices and defaults are listed after the help.

The choice lists that live in torch-importing layers (methods, recipes) are repeated here as plain names, so that
`--help` imports no torch; `tests/test_help.py` checks that they equal the registries.
"""

from __future__ import annotations

import typing
from typing import Literal

import click
import typer
from rich.console import Console
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..config import (
    CACHES,
    EOS_SUPPRESSION,
    EVAL_PROTOCOLS,
    EXPORT_FORMATS,
    NOISE_DRAWS,
    REMASKING,
    TRAIN_PRECISIONS,
)

# = adapters.registry.METHODS and training.recipes.RECIPES (tests/test_help.py keeps them equal)
METHOD_NAMES = (
    "lora", "nara", "nara-c", "dora", "nara-dora", "hira", "multilora", "prompt", "p-tuning", "prefix", "houlsby",
    "bitfit", "full", "trajectory", "trajectory-router",
)
RECIPE_NAMES = ("nara-commonsense", "nara-math", "nara-code")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")

# Annotations of the command functions: typer turns a Literal into a choice that is checked, listed and completed.
MethodName = Literal[METHOD_NAMES]
RecipeName = Literal[RECIPE_NAMES]
DtypeName = Literal[DTYPE_NAMES]
PrecisionName = Literal[TRAIN_PRECISIONS]
OverlongPolicy = Literal["drop", "truncate"]
ChatTemplate = Literal["auto", "none"]
NoiseDraw = Literal[NOISE_DRAWS]
RemaskingName = Literal[REMASKING]
CacheName = Literal[CACHES]
EosSuppression = Literal[EOS_SUPPRESSION]
ProtocolName = Literal[EVAL_PROTOCOLS]
ExportFormat = Literal[EXPORT_FORMATS]


def complete_device(incomplete: str) -> list[str]:
    """Shell completion of --device (free text, since cuda:1 is a device too)."""
    return [name for name in DEVICE_NAMES if name.startswith(incomplete)]


OTHER = "Other"
MODEL_DATA, METHOD, OPTIMISATION = "Model & data", "Method", "Optimisation"
SCHEDULE, DEVICES, OUTPUT = "Schedule & checkpoints", "Precision & devices", "Output"
SAMPLER, SPEED = "Sampler", "Faster sampling"
MODEL, PROMPTS, TASKS, INPUT = "Model", "Prompts", "Tasks", "Input"

_SAMPLER_PANELS = {
    **dict.fromkeys(
        ("gen_length", "steps", "block_length", "remasking", "temperature", "cfg_scale", "eos_suppression",
         "stop_at_eos", "schedule", "alg", "alg_temp", "top_p", "top_k"), SAMPLER),
    **dict.fromkeys(("threshold", "entropy_bound", "cache", "cache_refresh"), SPEED),
}

# command → flag name → panel; the panels are shown in the order they first appear here, `Other` last
PANELS: dict[str, dict[str, str]] = {
    "train": {
        **dict.fromkeys(
            ("model", "data", "prompt_field", "response_field", "chat_template", "max_length", "overlong", "padding",
             "noise_draw", "val_data", "val_size", "trust_remote_code"), MODEL_DATA),
        **dict.fromkeys(
            ("method", "recipe", "rank", "eta", "dropout", "targets", "adapter_option", "init_adapter"), METHOD),
        **dict.fromkeys(("lr", "hypernetwork_lr", "batch_size", "grad_accum", "seed"), OPTIMISATION),
        **dict.fromkeys(
            ("max_steps", "epochs", "eval_every", "val_noise_levels", "save_every", "keep_checkpoints", "resume"),
            SCHEDULE),
        **dict.fromkeys(("precision", "dtype", "device", "gradient_checkpointing"), DEVICES),
        **dict.fromkeys(("output", "overwrite", "config"), OUTPUT),
    },
    "sample": {
        **dict.fromkeys(("model", "adapter"), MODEL),
        **dict.fromkeys(("prompt", "prompts_file", "chat_template", "batch_size", "seed"), PROMPTS),
        **_SAMPLER_PANELS,
        **dict.fromkeys(("dtype", "device"), DEVICES),
        "output": OUTPUT,
    },
    "eval": {
        **dict.fromkeys(("model", "adapter", "compare_base", "trust_remote_code"), MODEL),
        **dict.fromkeys(
            ("tasks", "data_dir", "limit", "num_fewshot", "protocol", "mc_num", "mc_estimator", "mc_stop_se",
             "mc_futility_se", "chat_template", "seed", "allow_code_execution"), TASKS),
        "sampler_preset": SPEED,
        **_SAMPLER_PANELS,
        **dict.fromkeys(("dtype", "device", "batch_size"), DEVICES),
        **dict.fromkeys(("output", "log_samples"), OUTPUT),
    },
    "merge": {
        **dict.fromkeys(("adapter", "model", "noise_level"), INPUT),
        **dict.fromkeys(("dtype", "device"), DEVICES),
        **dict.fromkeys(("output", "max_shard_size", "overwrite"), OUTPUT),
    },
    "export": {
        **dict.fromkeys(("adapter", "noise_level", "format"), INPUT),
        **dict.fromkeys(("output", "overwrite"), OUTPUT),
    },
    "inspect": {
        **dict.fromkeys(("adapter", "model", "levels"), INPUT),
        **dict.fromkeys(("plot", "json"), OUTPUT),
    },
}

_METAVARS = {int: "INT", float: "NUM", str: "TEXT"}


def panel_of(command: str, name: str) -> str:
    return PANELS.get(command, {}).get(name, OTHER)


def _heading(console: Console, command: click.Command, ctx) -> None:
    """The usage line and the command's help text, as typer draws them."""
    console.print(Padding(Text(command.get_usage(ctx), style="bold"), (1, 1, 0, 1)))
    if command.help:
        console.print(Padding(Text(command.help.strip()), (1, 1, 1, 1)))


def _width(names: list[Text]) -> int:
    return max((len(line) for text in names for line in text.plain.splitlines()), default=1)


def _panel(console: Console, title: str, rows: list[tuple[Text, Text]], width: int | None = None) -> None:
    """A titled box of (names, help) rows; the names column is `width` wide (default: its widest line), never cut."""
    width = width or _width([names for names, _ in rows])
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(no_wrap=True, min_width=width, max_width=width)
    table.add_column(ratio=1)
    for row in rows:
        table.add_row(*row)
    console.print(Panel(table, title=title, title_align="left", border_style="dim"))


class HelpCommand(typer.core.TyperCommand):
    """A typer command whose `--help` groups its options into the panels of `PANELS`, never cutting a flag name."""

    def format_help(self, ctx, formatter) -> None:  # noqa: ARG002 - rich prints directly, as typer's own help does
        console = Console(highlight=False)
        _heading(console, self, ctx)
        params = [param for param in self.get_params(ctx) if not getattr(param, "hidden", False)]
        rows = [(panel_of(self.name, param.name) if param.name != "help" else OTHER, param) for param in params]
        order = list(dict.fromkeys(PANELS.get(self.name, {}).values())) + [OTHER]
        names = {param.name: _names(param, ctx) for _, param in rows}
        width = _width(list(names.values()))  # one width for every panel: the columns line up
        for panel in order:
            members = [(names[param.name], _help_text(param)) for name, param in rows if name == panel]
            if members:
                _panel(console, panel, members, width)


class HelpGroup(typer.core.TyperGroup):
    """The root `dllm-peft --help`: its flags as the commands show theirs (no `<bool>` after a flag), then the
    commands with their first sentence."""

    def format_help(self, ctx, formatter) -> None:  # noqa: ARG002 - rich prints directly, as typer's own help does
        console = Console(highlight=False)
        _heading(console, self, ctx)
        params = [param for param in self.get_params(ctx) if not getattr(param, "hidden", False)]
        _panel(console, "Options", [(_names(param, ctx), Text(param.help or "")) for param in params])
        commands = [self.get_command(ctx, name) for name in self.list_commands(ctx)]
        _panel(console, "Commands", [(Text(command.name, style="bold cyan"), Text(command.get_short_help_str(200)))
                                     for command in commands if command is not None and not command.hidden])


def _names(param, ctx) -> Text:
    """The flag names, one per line, the first followed by its value's kind (`--max-steps INT`)."""
    if param.param_type_name == "argument":
        return Text(param.name.upper(), style="bold cyan")
    text = Text()
    for index, name in enumerate([*param.opts, *param.secondary_opts]):
        if index:
            text.append("\n")
        text.append(name, style="bold cyan" if index == 0 else "cyan")
        if index == 0 and not param.is_flag:
            text.append(" " + _kind(param), style="yellow")
    return text


def _annotation(param):
    descriptor = getattr(param, "type_descriptor", None)
    return getattr(descriptor, "annotation", None)


def choices_of(param) -> tuple[str, ...]:
    annotation = _annotation(param)
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _kind(param) -> str:
    """A short word for the flag's value: CHOICE, INT, NUM, TEXT (`[str]` lists are repeatable TEXT)."""
    if choices_of(param):
        return "CHOICE"
    annotation = _annotation(param)
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return _METAVARS.get(annotation, "TEXT")


def _help_text(param) -> Text:
    text = Text(param.help or "")
    choices = choices_of(param)
    if choices:
        text.append(f" Choices: {', '.join(map(str, choices))}.", style="dim")
    default = param.default
    if param.name == "help":
        pass
    elif getattr(param, "is_flag", False):
        text.append(f" [default: {'on' if default else 'off'}]", style="dim")
    elif default is not None and param.show_default is not False and default != ():
        text.append(f" [default: {default}]", style="dim")
    if getattr(param, "required", False):
        text.append(" [required]", style="red")
    return text
