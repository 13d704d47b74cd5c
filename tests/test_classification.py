"""SST-2 and AG News (`data/classification.py`): TSV layouts with or without header → records with the documented
template and label words; the same files as `eval` tasks (multiple choice over label words, and generative)."""

from __future__ import annotations

import pytest

from dllm_peft.data.records import read_records
from dllm_peft.errors import DllmPeftError
from dllm_peft.evaluation.answers import is_correct
from dllm_peft.evaluation.catalogue import expand_tasks, lm_eval_task
from dllm_peft.evaluation.documents import load_documents


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_glue_sst2_with_header_becomes_prompt_and_label_word(tmp_path):
    source = write(tmp_path / "train.tsv", ["sentence\tlabel", "a charming journey \t1", "bleak and desperate \t0"])
    records = read_records(str(source))
    assert records[0]["prompt"] == "Review: a charming journey\nSentiment (negative or positive):"
    assert [r["response"] for r in records] == ["positive", "negative"]


@pytest.mark.parametrize(("labels", "words"), [
    (["Sports", "Sci/Tech"], ["Sports", "Sci/Tech"]),
    (["1", "3"], ["Sports", "Sci/Tech"]),  # Hugging Face ag_news numbering 0-3
    (["4", "1"], ["Sci/Tech", "World"]),  # the original CSV numbering 1-4
])
def test_ag_news_without_header_names_or_numbers(tmp_path, labels, words):
    source = write(tmp_path / "agnews.tsv", [f"Text number {i} #39;s \\ here\t{label}" for i, label in enumerate(labels)])
    records = read_records(str(source))
    assert [r["response"] for r in records] == words
    assert records[0]["prompt"] == "Article: Text number 0's here\nTopic (World, Sports, Business or Sci/Tech):"


def test_unknown_labels_are_one_sentence(tmp_path):
    source = write(tmp_path / "x.tsv", ["some text\tmaybe"])
    with pytest.raises(DllmPeftError, match="neither SST-2's"):
        read_records(str(source))


def test_eval_documents_offer_multiple_choice_and_generative_views(tmp_path):
    write(tmp_path / "sst2" / "dev.tsv", ["sentence\tlabel", "great fun \t1", "dull \t0"])
    write(tmp_path / "sst2" / "train.tsv", ["sentence\tlabel", "lovely \t1"])
    documents = load_documents("sst2", str(tmp_path))
    first = documents["test"][0]
    assert first["choices"] == ["negative", "positive"] and first["label"] == 1 and len(documents["train"]) == 1
    assert is_correct(first, " Positive, clearly.", "label", ("negative", "positive"))
    assert lm_eval_task(expand_tasks("sst2")[0], "mc", True) == "dllm_peft_sst2_mc"
    assert [spec.name for spec in expand_tasks("classification")] == ["sst2", "agnews"]
    with pytest.raises(DllmPeftError, match="agnews/test.tsv"):
        load_documents("agnews", str(tmp_path))
