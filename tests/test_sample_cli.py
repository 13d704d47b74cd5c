"""`dllm-peft sample`: flags in sync with the configs, JSONL output equal to the core, one sentence per mistake."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
import typer.main
from rich.console import Console

from dllm_peft.cli import app, main
from dllm_peft.cli.sample_command import LiveCanvas, displayable, render_response
from dllm_peft.config import SampleConfig, SamplerConfig
from dllm_peft.diffusion.sampler import sample
from dllm_peft.models import tiny_llada


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_sample_flags_equal_the_config_fields():
    command = typer.main.get_command(app).commands["sample"]
    flags = {param.name for param in command.params}
    fields = {field.name for config in (SampleConfig, SamplerConfig) for field in dataclasses.fields(config)}
    assert flags == fields


def test_jsonl_output_holds_what_the_sampler_returns(tmp_path, capsys):
    prompts = ["Uppercase: apple\nAnswer:", "Reverse: tiger\nAnswer:", "Q: 1 + 1 = ?"]
    prompts_file, output = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in prompts))
    settings = ["--gen-length", "16", "--block-length", "8", "--steps", "8", "--temperature", "0.5"]
    argv = ["sample", "--model", "tiny-llada", "--prompts-file", str(prompts_file), "--output", str(output)]
    argv += ["--seed", "3", "--batch-size", "2"]
    code, _, err = run(argv + settings, capsys)
    assert code in (0, None), err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["prompt"] for record in records] == prompts
    backbone = tiny_llada()
    for index, record in enumerate(records):  # prompt i uses seed + i, whatever the batch it ran in
        settings = SamplerConfig(gen_length=16, block_length=8, steps=8, temperature=0.5)
        alone = sample(backbone, [backbone.encode(prompts[index])], settings, [torch.Generator().manual_seed(3 + index)])
        assert record["text"] == backbone.decode(alone.tokens[0])
        assert record["steps"] == alone.steps[0] and record["tokens_per_second"] > 0
    assert "3 prompt(s)" in err and f"wrote {output}" in err.replace("\n", "")


def test_without_output_the_text_goes_to_stdout(capsys):
    argv = ["sample", "--model", "tiny-llada", "--prompt", "hello", "--gen-length", "8", "--steps", "8", "--block-length", "8"]
    code, out, _ = run(argv, capsys)
    assert code in (0, None)
    backbone = tiny_llada()
    expected = sample(backbone, [backbone.encode("hello")], SamplerConfig(gen_length=8, steps=8, block_length=8))
    assert out.rstrip("\n") == displayable(backbone.decode(expected.tokens[0])).rstrip("\n")


def test_the_live_view_shows_masks_filling_in():
    backbone = tiny_llada()
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    settings = SamplerConfig(gen_length=8, steps=4, block_length=8)
    with LiveCanvas(backbone, 0, 1, settings, console) as live:
        sample(backbone, [backbone.encode("hi")], settings, on_step=live.update)
    shown = stream.getvalue()
    assert "step 1" in shown and "step 4" in shown and "░" in shown


def test_render_response_draws_one_placeholder_per_mask():
    backbone = tiny_llada()
    ids = [72, 105, backbone.mask_id, backbone.mask_id, 33]
    assert render_response(backbone, ids) == "Hi░░!"
    assert render_response(backbone, [backbone.mask_id]) == "░"
    assert displayable("a\x1b[2Jb\n\tc") == "a\ufffd[2Jb\n\tc"  # no terminal escapes from model output


def bad(argv, capsys, expected):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert expected in err.replace("\n", " ")
    assert "Traceback" not in err + out
    assert len([line for line in err.splitlines() if line.strip()]) <= 3  # one sentence (rich may wrap it)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--prompt", "hi", "--gen-length", "30", "--block-length", "8"], "--gen-length 30 is not divisible by"),
        (["--prompt", "hi", "--gen-length", "32", "--block-length", "8", "--steps", "2"], "--steps 2 must be a"),
        (["--prompt", ""], "prompt 1 is empty"),
        (["--prompt", "x" * 500], "prompt 1 has 500 tokens, which with --gen-length 64 exceeds the model's context"),
        (["--prompt", "hi", "--prompts-file", "p.txt"], "pass exactly one of --prompt TEXT or --prompts-file FILE"),
        (["--prompts-file", "missing.txt"], "prompts file 'missing.txt' does not exist"),
        (["--prompt", "hi", "--threshold", "0.9", "--entropy-bound", "1"], "pass only one of them"),
        (["--prompt", "hi", "--cache", "dula"], "unknown --cache 'dula'; choose one of: none, prefix, dual"),
    ],
)
def test_bad_input_is_one_sentence(argv, expected, capsys):
    bad(["sample", *argv], capsys, expected)


def test_an_empty_line_in_a_prompts_file_names_its_line(tmp_path, capsys):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("first\n\nthird\n")
    bad(["sample", "--prompts-file", str(prompts_file)], capsys, "prompts.txt:2: the prompt is empty")
