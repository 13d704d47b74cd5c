"""Evaluation at scale (issue 17): generation fitted to the context window, data-parallel lm-eval runs that equal one
process, progress with the time remaining, per-document sample logs, and lm-eval's argument habits."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance

from dllm_peft.cli import main
from dllm_peft.errors import DllmPeftError
from dllm_peft.evaluation.catalogue import TASKS_DIR
from dllm_peft.evaluation.lm import DllmPeftLM
from dllm_peft.evaluation.progress import PlainProgress, clock, remaining_seconds

from .test_eval_tasks import write_llm_adapters_folder


def generate(prompt: str, max_gen_toks: int) -> Instance:
    return Instance(request_type="generate_until", doc={}, arguments=(prompt, {"until": [], "max_gen_toks": max_gen_toks}),
                    idx=0)


@pytest.fixture(scope="module")
def small_window():
    """tiny-llada seen through a 64-token context window."""
    return DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,batch_size=4,max_length=64,device=cpu")


def test_a_task_length_that_fills_the_window_is_capped_with_one_notice_and_the_prompt_keeps_its_end(small_window):
    notices = []
    small_window.on_notice, small_window._noticed = notices.append, set()
    long_prompt = "few-shot example. " * 20 + "Question: what is 2 + 2?"  # 400+ tokens
    config = small_window._fitted_config({"max_gen_toks": 64}, len(small_window.backbone.encode(long_prompt)))
    assert (config.gen_length, config.block_length, config.steps) == (32, 32, 32)  # half the window for the prompt
    short = small_window._fitted_config({"max_gen_toks": 64}, 10)
    assert short.gen_length == 32  # a short prompt keeps all its tokens; the generation, whole 32s of the rest
    responses = small_window.generate_until([generate(long_prompt, 64), generate("Q: 1 + 1?", 64)])
    assert all(isinstance(text, str) for text in responses)
    assert len(notices) == 1 and "context is 64 tokens" in notices[0]
    kept = small_window._fit(small_window.backbone.encode(long_prompt), 32)
    assert small_window.backbone.decode(kept).endswith("what is 2 + 2?") and len(kept) == 32


def test_a_gen_length_the_user_set_is_refused_in_one_sentence_when_it_leaves_no_room(small_window):
    lm = DllmPeftLM.from_backbone(small_window.backbone, max_length=64, gen_length=64)
    with pytest.raises(DllmPeftError, match="--gen-length 64 leaves no room for a prompt in the model's context of 64"):
        lm.generate_until([generate("Q?", 16)])


def test_the_math_tasks_run_to_a_table_on_the_default_model_with_no_other_flag(tmp_path, capsys):
    """Must show 1 of issue 17 on a folder in the LLM-Adapters layout (three fixture rows per task: the SVAMP and MAWPS
    files are not in ../shared/data): the default gen length fills the 256-token window, so it is capped, once."""
    write_llm_adapters_folder(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--tasks", "svamp,mawps,gsm8k", "--data-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert exited.value.code == 0, captured.err
    rows = [line.split("│")[1:-1] for line in captured.out.splitlines() if line.startswith("│")]
    assert [(cells[0].strip(), cells[-1].strip()) for cells in rows] == [("svamp", "3"), ("mawps", "3"), ("gsm8k", "3")]
    assert captured.err.count("generation is capped") == 1 and "context is 256 tokens" in captured.err


def test_peft_is_an_alias_of_adapter_and_batch_size_auto_is_refused():
    with pytest.raises(DllmPeftError, match="batch_size=auto is not supported"):
        DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,batch_size=auto,device=cpu")
    with pytest.raises(DllmPeftError, match="peft=a and adapter=b name two adapters"):
        DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,peft=a,adapter=b,device=cpu")


def test_plain_progress_prints_done_total_and_time_left_every_few_percent():
    stream = io.StringIO()
    progress = PlainProgress(stream)
    for done in range(1, 201):
        progress("loglikelihood", done, 200)
    lines = stream.getvalue().splitlines()
    assert 19 <= len(lines) <= 21 and lines[-1].startswith("dllm-peft loglikelihood: 200/200 (100 %)")
    assert "remaining" in lines[0]
    assert remaining_seconds(10.0, 1, 4) == 30.0 and clock(3723) == "1:02:03" and clock(None) == "?"


def test_log_samples_writes_one_json_line_per_document(tmp_path, capsys):
    output = tmp_path / "results.json"
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--model", "tiny-llada", "--tasks", "uppercase", "--limit", "3", "--gen-length", "8",
             "--device", "cpu", "--output", str(output), "--log-samples"])
    assert exited.value.code == 0
    rows = [json.loads(line) for line in (tmp_path / "results.samples" / "base-uppercase.jsonl").read_text().splitlines()]
    assert [row["doc_id"] for row in rows] == [0, 1, 2]
    assert set(rows[0]) >= {"prompt", "target", "generation", "extracted", "correct"}
    assert all(isinstance(row["correct"], bool) for row in rows)


def test_log_samples_needs_output(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--model", "tiny-llada", "--tasks", "uppercase", "--log-samples"])
    assert exited.value.code == 2
    assert "--log-samples writes the samples beside the results file; pass --output too" in capsys.readouterr().err


def _samples(folder: Path) -> dict[str, dict[int, list]]:
    """task → doc_id → the model's response to each request, from lm-eval's samples files.

    A process with fewer documents pads with copies of its last request, whose responses lm-eval appends to that
    request (and its filters ignore): only the first response of a request counts."""
    found: dict[str, dict[int, list]] = {}
    for path in folder.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["doc_id"] not in found.setdefault(task, {}), "a document was scored twice"
            found[task][row["doc_id"]] = [responses[0] for responses in row["resps"]]
    return found


def test_two_processes_under_accelerate_launch_score_each_document_once_and_equal_one_process(tmp_path):
    write_llm_adapters_folder(tmp_path)
    model_args = f"pretrained=tiny-llada,mc_num=4,gen_length=8,batch_size=4,data_dir={tmp_path}"
    lm_eval_args = ["--model", "dllm-peft", "--model_args", model_args, "--tasks",
                    "dllm_peft_uppercase,dllm_peft_boolq_mc", "--include_path", str(TASKS_DIR), "--limit", "16",
                    "--device", "cpu", "--log_samples"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # `accelerate launch` as a user runs it: without GPUs, --multi_gpu starts two CPU processes joined by gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run([*launch, "-m", "lm_eval", *lm_eval_args, "--output_path",
                           str(tmp_path / "two")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    two = _samples(tmp_path / "two")
    assert {task: len(docs) for task, docs in two.items()} == {"dllm_peft_uppercase": 16, "dllm_peft_boolq_mc": 3}
    assert "dllm-peft generate_until: 8/8 (100 %)" in done.stderr  # rank 0 ran half of the 16 prompts

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(tmp_path)})
    one = simple_evaluate(model="dllm-peft", model_args=model_args, device="cpu", limit=16, log_samples=True,
                          tasks=["dllm_peft_uppercase", "dllm_peft_boolq_mc"], task_manager=manager)
    for task, rows in one["samples"].items():  # the same responses and log-likelihoods, document by document
        expected = {row["doc_id"]: [[str(value) for value in responses[0]] if isinstance(responses[0], tuple)
                                    else responses[0] for responses in row["resps"]] for row in rows}
        assert two[task] == expected


def test_the_harness_names_the_base_model_when_only_an_adapter_is_given(tmp_path, backbone):
    from dllm_peft.adapters.base import inject
    from dllm_peft.adapters.files import save_adapter
    from dllm_peft.adapters.registry import build_adapter_config, get_method
    from dllm_peft.evaluation.__main__ import with_base_model

    inject(backbone.model, build_adapter_config("lora", rank=2), get_method("lora").layer_class,
           backbone.default_targets)
    save_adapter(backbone, tmp_path / "adapter")
    adapter = tmp_path / "adapter"
    assert with_base_model(f"adapter={adapter},mc_num=8") == f"pretrained=tiny-llada,adapter={adapter},mc_num=8"
    assert with_base_model(f"pretrained=x,peft={adapter}") == f"pretrained=x,peft={adapter}"
