"""The lm-eval model class and `dllm-peft eval`: registration, the three request types on a real tiny model, the
command line (flags = config fields, base + adapter in one table, files written) and its one-sentence errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from dllm_peft.adapters.base import inject
from dllm_peft.adapters.files import save_adapter
from dllm_peft.adapters.registry import build_adapter_config, get_method
from dllm_peft.cli import app, main
from dllm_peft.config import EvalConfig, SamplerConfig
from dllm_peft.diffusion.likelihood import log_likelihoods
from dllm_peft.errors import DllmPeftError
from dllm_peft.evaluation.__main__ import main as harness_main
from dllm_peft.evaluation.catalogue import TASKS_DIR
from dllm_peft.evaluation.lm import DllmPeftLM
from dllm_peft.evaluation.registration import MODEL_MODULE, wrap_get_model

from .conftest import randomize_adapter
from .test_eval_tasks import write_llm_adapters_folder

ROOT = Path(__file__).resolve().parents[1]


def request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


@pytest.fixture
def lm():
    return DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,mc_num=8,batch_size=4,gen_length=8,device=cpu")


def test_lm_eval_finds_the_model_by_name_and_the_package_declares_the_entry_point():
    assert get_model("dllm-peft") is DllmPeftLM
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lm_eval.models"]
    assert declared == {"dllm-peft": "dllm_peft.evaluation.lm:DllmPeftLM"}


def test_model_arguments_reach_the_estimator_and_the_sampler(lm):
    assert (lm.mc_num, lm.batch_size, lm.sampler_settings, lm.backbone.name) == (8, 4, {"gen_length": 8}, "tiny-llada")
    assert lm._sampler_config({"max_gen_toks": 256}) == SamplerConfig(gen_length=8, block_length=8, steps=8)
    with pytest.raises(DllmPeftError, match="unknown model argument 'temprature'"):
        DllmPeftLM.create_from_arg_string("pretrained=tiny-llada,temprature=0.5,device=cpu")


def test_loglikelihood_is_the_estimator_with_lm_eval_s_whitespace_rule(lm):
    results = lm.loglikelihood([request("loglikelihood", "Answer: ", "APPLE"), request("loglikelihood", "Q", " B")])
    encode = lm.backbone.encode
    expected = log_likelihoods(lm.backbone, [(encode("Answer:"), encode(" APPLE")), (encode("Q"), encode(" B"))],
                               mc_num=8, batch_size=4, seed=0)
    assert [score for score, _ in results] == pytest.approx(expected, abs=1e-4)
    assert [greedy for _, greedy in results] == [False, False]


def test_loglikelihood_rolling_scores_the_text_after_eos(lm):
    text = "apple river stone"
    (score,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    expected = log_likelihoods(lm.backbone, [([lm.backbone.eos_id], lm.backbone.encode(text))], 8, 4, 0)[0]
    assert score == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_batch_independent_and_cuts_at_the_stop_strings(lm):
    prompts = [f"Uppercase: {word}\nAnswer:" for word in ("apple", "tiger", "cloud")]
    free = lm.generate_until([request("generate_until", p, {"until": [], "max_gen_toks": 8}) for p in prompts])
    lm.batch_size = 1
    one_by_one = lm.generate_until([request("generate_until", p, {"until": [], "max_gen_toks": 8}) for p in prompts])
    assert free == one_by_one and all(isinstance(text, str) for text in free)
    stop = free[0][1:3]
    (cut,) = lm.generate_until([request("generate_until", prompts[0], {"until": [stop], "max_gen_toks": 8})])
    assert len(stop) == 2 and cut == free[0][: free[0].index(stop)]


def test_lm_eval_runs_our_tasks_on_the_model_named_dllm_peft():
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    results = simple_evaluate(model="dllm-peft", model_args="pretrained=tiny-llada,gen_length=8", batch_size=4,
                              device="cpu", tasks=["dllm_peft_uppercase"], limit=2, task_manager=manager)
    assert results["results"]["dllm_peft_uppercase"]["exact_match,none"] in (0.0, 0.5, 1.0)


def test_python_m_dllm_peft_harness_adds_our_tasks_and_hands_over_to_lm_eval(monkeypatch):
    import lm_eval.__main__

    handed_over = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: handed_over.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["dllm_peft.evaluation"])
    harness_main(["--model", "dllm-peft", "--tasks", "dllm_peft_gsm8k", "--device", "cpu"])
    assert handed_over == [["lm-eval", "--model", "dllm-peft", "--tasks", "dllm_peft_gsm8k", "--device", "cpu",
                            "--include_path", str(TASKS_DIR)]]



def test_the_startup_hook_is_installed_and_imports_neither_torch_nor_lm_eval():
    probe = "import sys; print(sorted(m for m in ('torch', 'lm_eval', 'dllm_peft.evaluation.registration') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['dllm_peft.evaluation.registration']", "reinstall the package: dllm_peft_lm_eval.pth is missing"


def test_the_wrapped_get_model_imports_our_module_only_when_asked_for_dllm_peft(monkeypatch):
    asked, imported = [], []
    registry = type(sys)("fake_registry")  # a dict-style registry, as in older lm-eval versions
    registry.get_model = lambda name: asked.append(name) or name
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    wrap_get_model(registry)
    wrap_get_model(registry)  # idempotent
    assert (registry.get_model("hf"), imported) == ("hf", [])
    assert (registry.get_model("dllm-peft"), imported, asked) == ("dllm-peft", [MODEL_MODULE], ["hf", "dllm-peft"])


def test_the_plain_lm_eval_command_runs_dllm_peft_with_an_adapter(tmp_path, backbone):
    script = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    if script is None:
        pytest.skip("the lm_eval console script is not on PATH")
    method = get_method("nara")
    inject(backbone.model, build_adapter_config("nara", rank=4), method.layer_class, backbone.default_targets)
    save_adapter(backbone, tmp_path / "adapter")
    write_llm_adapters_folder(tmp_path)
    model_args = f"pretrained=tiny-llada,adapter={tmp_path / 'adapter'},mc_num=2,data_dir={tmp_path}"
    command = [script, "--model", "dllm-peft", "--model_args", model_args, "--tasks", "dllm_peft_boolq_mc",
               "--include_path", str(TASKS_DIR), "--limit", "2", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["dllm_peft_boolq_mc"]["acc,none"] in (0.0, 0.5, 1.0)
    assert results["config"]["adapter"] == str(tmp_path / "adapter")
    assert results["config"]["model_args"]["pretrained"] == "tiny-llada"

# -- the command line -----------------------------------------------------------------------------------------------
def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_eval_flags_equal_the_config_and_sampler_fields():
    flags = {param.name for param in typer.main.get_command(app).commands["eval"].params}
    fields = {field.name for field in dataclasses.fields(EvalConfig)} - {"sampler"}
    assert flags == fields | {field.name for field in dataclasses.fields(SamplerConfig)}


def test_eval_of_an_adapter_reports_base_and_adapter_in_one_table(tmp_path, capsys, backbone):
    method = get_method("nara")
    inject(backbone.model, build_adapter_config("nara", rank=4), method.layer_class, backbone.default_targets)
    randomize_adapter(backbone.model)
    save_adapter(backbone, tmp_path / "adapter")
    output = tmp_path / "results.json"
    code, out, _ = run(["eval", "--adapter", str(tmp_path / "adapter"), "--tasks", "uppercase,addition", "--limit", "3",
                        "--gen-length", "8", "--output", str(output)], capsys)
    assert code in (0, None), out
    assert all(word in out for word in ("base", "adapter", "Δ", "uppercase", "addition", "exact_match"))
    saved = json.loads(output.read_text())
    assert set(saved["results"]) == {"base", "adapter"} and saved["model"] == "tiny-llada"
    assert saved["results"]["adapter"]["addition"]["documents"] == 3
    assert saved["settings"]["sampler"] == {"gen_length": 8}
    assert {"dllm_peft", "lm_eval", "torch"} <= set(saved["versions"])
    assert output.with_suffix(".md").read_text().startswith("| task | metric | base | adapter | Δ |")


def test_eval_multiple_choice_runs_the_estimator_on_a_local_folder(tmp_path, capsys):
    write_llm_adapters_folder(tmp_path)
    code, out, _ = run(["eval", "--tasks", "boolq,piqa", "--protocol", "mc", "--data-dir", str(tmp_path),
                        "--mc-num", "4", "--limit", "2"], capsys)
    assert code in (0, None) and "boolq" in out and "piqa" in out and "acc" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tasks", "humaneval"], "humaneval runs the generated code; pass --allow-code-execution"),
        (["--tasks", "gsm8kk"], "unknown task 'gsm8kk' (did you mean 'gsm8k'?); choose from: arc, commonsense, math, code"),
        (["--protocol", "loglik"], "unknown --protocol 'loglik'; choose one of: generative, mc"),
        (["--tasks", "svamp", "--data-dir", "/nonexistent"], "--data-dir '/nonexistent' is not a directory"),
        (["--remasking", "lowest"], "unknown --remasking 'lowest'"),
    ],
)
def test_expected_mistakes_are_one_sentence(argv, expected, capsys):
    code, out, err = run(["eval", *argv], capsys)
    assert code == 2 and expected in err.replace("\n", " ") and "Traceback" not in out + err
