"""Training data: sources, fields, chat template, the length report, EOS padding, the stream order, settings files."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_peft.config import TrainConfig
from dllm_peft.data.records import (
    ExampleOrder,
    collate,
    format_prompt,
    has_split,
    hold_out,
    prompt_response_pairs,
    read_records,
    tokenize_pairs,
)
from dllm_peft.errors import DllmPeftError
from dllm_peft.models.byte_tokenizer import ByteTokenizer
from dllm_peft.training.recipes import RECIPES, read_settings_file, resolve_train_config


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_jsonl_json_array_and_llm_adapters_layouts_read_the_same_pairs(tmp_path):
    records = [
        {"instruction": "Add", "input": "2 3", "output": "5"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    as_lines = read_records(write_jsonl(tmp_path / "a.jsonl", records))
    (tmp_path / "a.json").write_text(json.dumps(records, indent=2))
    as_array = read_records(str(tmp_path / "a.json"))
    assert as_lines == as_array == records
    assert prompt_response_pairs(as_lines) == [("Add\n2 3", "5"), ("Say hi", "hi")]


def test_named_fields(tmp_path):
    records = read_records(write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1", "answer": 2}]))
    assert prompt_response_pairs(records, "question", "answer") == [("1+1", "2")]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": \n', "bad.jsonl:3: not a valid JSON line"),
        ('{"prompt": "a", "response": "b"}\n[1, 2]\n', "bad.jsonl:2: expected a JSON object, got list"),
        ("", "holds no examples"),
    ],
)
def test_broken_files_name_the_line(tmp_path, content, expected):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DllmPeftError, match=expected):
        read_records(str(tmp_path / "bad.jsonl"))


def test_json_arrays_are_checked_too(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "object.json").write_text('{"prompt": "a"}')
    (tmp_path / "broken.json").write_text('[\n{"prompt": "a",\n')
    with pytest.raises(DllmPeftError, match="holds no examples"):
        read_records(str(tmp_path / "empty.json"))
    with pytest.raises(DllmPeftError, match="holds a JSON dict; expected an array"):
        read_records(str(tmp_path / "object.json"))
    with pytest.raises(DllmPeftError, match=r"broken.json:3: not valid JSON"):
        read_records(str(tmp_path / "broken.json"))


def test_missing_file_and_missing_fields(tmp_path):
    with pytest.raises(DllmPeftError, match="data file 'nope.jsonl' does not exist"):
        read_records("nope.jsonl")
    with pytest.raises(DllmPeftError, match=r"present: answer, question\); name them with --prompt-field"):
        prompt_response_pairs([{"question": "a", "answer": "b"}])
    with pytest.raises(DllmPeftError, match=r"record 2 of data has no 'response' value \(present: prompt\)"):
        prompt_response_pairs([{"prompt": "a", "response": "b"}, {"prompt": "c"}])


def test_a_datasets_directory_with_its_validation_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"prompt": ["p1", "p2"], "response": ["r1", "r2"]}
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                   "validation": datasets.Dataset.from_dict({"prompt": ["v"], "response": ["w"]})})
    splits.save_to_disk(str(tmp_path / "ds"))
    expected = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    assert read_records(str(tmp_path / "ds")) == expected
    assert read_records(str(tmp_path / "ds"), "validation") == [{"prompt": "v", "response": "w"}]
    assert has_split(str(tmp_path / "ds"), "validation") and not has_split(str(tmp_path / "ds"), "test")
    with pytest.raises(DllmPeftError, match=r"has no 'test' split \(it has: train, validation\)"):
        read_records(str(tmp_path / "ds"), "test")


def test_an_unreachable_hub_dataset_is_one_sentence(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/commonsense' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DllmPeftError, match=r"from the Hugging Face hub \(is this machine online\?\).*local dataset"):
        read_records("someone/commonsense")


class TemplatedTokenizer(ByteTokenizer):
    chat_template = "{{ user }}"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize and messages[0]["role"] == "user"
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_chat_template_auto_uses_the_tokenizers_template_and_none_skips_it(backbone):
    assert format_prompt(TemplatedTokenizer(), "hi", "auto") == "<user>hi</user><assistant>"
    assert format_prompt(TemplatedTokenizer(), "hi", "none") == "hi"
    assert format_prompt(ByteTokenizer(), "hi", "auto") == "hi"  # no template: the plain prompt
    backbone.tokenizer = TemplatedTokenizer()
    [example], _ = tokenize_pairs([("hi", "yo")], backbone, 64, chat_template="auto")
    assert bytes(example.prompt_ids).decode() == "<user>hi</user><assistant>"
    assert example.response_ids == (*b"yo", backbone.eos_id)


def test_length_report_counts_what_drop_and_truncate_did(backbone):
    pairs = [("p" * 4, "r" * 3), ("p" * 4, "r" * 20), ("p" * 30, "r")]  # lengths with EOS: 8, 25, 32
    kept, report = tokenize_pairs(pairs, backbone, max_length=10, overlong="drop")
    assert len(kept) == 1 and (report.total, report.overlong, report.dropped, report.longest) == (3, 2, 2, 32)
    kept, report = tokenize_pairs(pairs, backbone, max_length=10, overlong="truncate")
    assert (report.overlong, report.truncated, report.dropped) == (2, 1, 1)  # the 30-token prompt cannot fit
    assert len(kept[1]) == 10 and kept[1].response_ids[-1] == backbone.eos_id
    with pytest.raises(DllmPeftError, match=r"all 1 examples exceed --max-length 10 \(longest 32\); raise it"):
        tokenize_pairs(pairs[2:], backbone, max_length=10, overlong="truncate")


def test_eos_padding_belongs_to_the_response_and_can_reach_max_length(backbone):
    examples, _ = tokenize_pairs([("ab", "c"), ("abcd", "cdef")], backbone, 64)
    batch = collate(examples, backbone.eos_id, pad_to=12)
    assert batch.input_ids.shape == (2, 12)
    assert batch.input_ids[0].tolist() == [*b"abc", 256, *[256] * 8]
    assert batch.response_mask[0].tolist() == [False] * 2 + [True] * 10
    assert batch.response_mask[1].tolist() == [False] * 4 + [True] * 8
    assert torch.equal(batch.attention_mask, torch.ones(2, 12, dtype=torch.long))


def test_the_stream_is_a_fresh_permutation_every_epoch_and_depends_only_on_the_position():
    order = ExampleOrder(10, seed=3)
    stream = order.indices(0, 30)
    assert all(sorted(stream[start : start + 10]) == list(range(10)) for start in (0, 10, 20))
    assert stream[:10] != stream[10:20]
    assert ExampleOrder(10, seed=3).indices(17, 6) == stream[17:23]  # a resumed or sharded reader agrees
    assert ExampleOrder(10, seed=4).indices(0, 10) != stream[:10]


def test_hold_out_is_fixed_by_the_seed_and_takes_at_most_a_tenth(backbone):
    examples, _ = tokenize_pairs([(f"p{i}", "r") for i in range(50)], backbone, 64)
    train, validation = hold_out(examples, 64, seed=1)
    assert len(validation) == 5 and len(train) == 45 and not set(train) & set(validation)
    assert hold_out(examples, 64, seed=1) == (train, validation)
    assert hold_out(examples[:9], 64, seed=1) == (examples[:9], [])


def test_recipes_settings_files_and_flags_are_layered(tmp_path):
    config = resolve_train_config({"recipe": "nara-math"})
    assert (config.lr, config.epochs, config.max_steps, config.grad_accum, config.batch_size) == (1e-4, 10, None, 32, 1)
    assert (config.rank, config.targets) == (32, "q_proj,k_proj,v_proj,attn_out")
    assert (config.max_length, config.padding, config.chat_template) == (512, "max_length", "auto")
    assert resolve_train_config({"recipe": "nara-math", "max_steps": 10}).epochs is None  # flags win, run length too
    (tmp_path / "run.yaml").write_text("recipe: nara-code\nlr: 3e-5\nmax-steps: 7\nepochs: 2\n")
    config = resolve_train_config({"config": str(tmp_path / "run.yaml"), "lr": 1e-3})
    assert (config.recipe, config.lr, config.max_steps, config.epochs, config.rank) == ("nara-code", 1e-3, 7, 2.0, 32)
    (tmp_path / "run.toml").write_text('method = "lora"\nbatch_size = 2\ngradient-checkpointing = true\n')
    expected = {"method": "lora", "batch_size": 2, "gradient_checkpointing": True}
    assert read_settings_file(str(tmp_path / "run.toml")) == expected
    assert set(RECIPES) == {"nara-commonsense", "nara-math", "nara-code"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("learning_rate: 0.1\n", "unknown setting 'learning_rate'; see"),
        ("max_step: 3\n", "unknown setting 'max_step'; did you mean max-steps?"),
        ("max_steps: 2.5\n", "max-steps must be int, got 2.5"),
        ("resume: maybe\n", "resume must be bool, got 'maybe'"),
        ("- lr\n", "must hold a mapping of flag names to values, not a list"),
    ],
)
def test_bad_settings_files(tmp_path, text, expected):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(DllmPeftError, match=expected):
        read_settings_file(str(tmp_path / "bad.yaml"))


def test_config_values_are_checked():
    with pytest.raises(DllmPeftError, match="--val-noise-levels '0.1,1.5' must be comma-separated numbers in"):
        TrainConfig(val_noise_levels="0.1,1.5")
    with pytest.raises(DllmPeftError, match="--padding must be one of canvas, longest, max_length or a positive number of tokens, got 'max'"):
        TrainConfig(padding="max")
    with pytest.raises(DllmPeftError, match="pass only one"):
        TrainConfig(resume=True, overwrite=True)
    with pytest.raises(DllmPeftError, match="unknown recipe 'nara'; choose one of: nara-commonsense"):
        resolve_train_config({"recipe": "nara"})
