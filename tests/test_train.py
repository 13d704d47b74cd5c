"""The training loop: schedule, validation along λ, metrics, gradient checkpointing, and the bad-input matrix."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from dllm_peft.adapters.files import read_adapter
from dllm_peft.adapters.options import adapter_settings
from dllm_peft.cli import main
from dllm_peft.config import DEFAULT_DATA, TrainConfig
from dllm_peft.errors import DllmPeftError
from dllm_peft.training.metrics import MetricsLog, read_metrics
from dllm_peft.training.train import learning_rate, total_steps, train

TINY = dict(rank=4, batch_size=4, val_size=8, eval_every=0, save_every=0, lr=1e-2)



def test_learning_rate_warms_up_over_five_percent_then_decays_linearly_to_zero():
    rates = [learning_rate(step, 100, 1.0) for step in range(100)]
    assert rates[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert rates[5] == 1.0 and rates[50] == pytest.approx(50 / 95) and rates[99] == pytest.approx(1 / 95)


def test_epochs_set_the_number_of_steps_and_max_steps_caps_it():
    assert total_steps(TrainConfig(epochs=2, max_steps=None), 100, 16) == 13
    assert total_steps(TrainConfig(epochs=2, max_steps=10), 100, 16) == 10
    assert total_steps(TrainConfig(epochs=0.01, max_steps=None), 100, 16) == 1
    assert total_steps(TrainConfig(max_steps=7), 100, 16) == 7


def test_metrics_and_validation_along_the_noise_levels(tmp_path):
    config = TrainConfig(**{**TINY, "eval_every": 2}, max_steps=4, output=str(tmp_path / "nara"))
    result = train(config)
    assert [report.step for report in result.validation] == [0, 2, 4]
    train_lines, validation_lines = read_metrics(config.output, "train"), read_metrics(config.output, "validation")
    assert [line["step"] for line in train_lines] == [1, 2, 3, 4]
    assert [line["loss"] for line in train_lines] == result.losses
    assert set(validation_lines[-1]["loss_by_noise_level"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    assert result.validation[-1].by_noise_level[0.5] == validation_lines[-1]["loss_by_noise_level"]["0.5"]
    assert result.validation[-1].loss < result.validation[0].loss
    # Every adapter starts as the base model and validation masks are seeded: step 0 is the same for LoRA.
    lora = train(TrainConfig(**TINY, method="lora", max_steps=1, output=str(tmp_path / "lora")))
    assert lora.validation[0] == result.validation[0]
    record, _ = read_adapter(config.output)
    assert record["training"]["validation"]["step"] == 4 and record["training"]["steps"] == 4


def test_gradient_checkpointing_changes_memory_not_results(tmp_path):
    plain = train(TrainConfig(**TINY, max_steps=3, dropout=0.1, output=str(tmp_path / "plain")))
    checkpointed = train(
        TrainConfig(**TINY, max_steps=3, dropout=0.1, gradient_checkpointing=True, output=str(tmp_path / "ckpt"))
    )
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-6)
    (_, a), (_, b) = read_adapter(tmp_path / "plain"), read_adapter(tmp_path / "ckpt")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_a_method_with_a_regularizer_trains(tmp_path):
    result = train(TrainConfig(**TINY, method="trajectory", max_steps=2, output=str(tmp_path / "t")))
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert read_adapter(tmp_path / "t")[0]["method"] == "trajectory"


# -- the bad-input matrix: one sentence, exit status 2, no adapter ---------------------------------------------------
def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def refused(tmp_path, capsys, argv, expected, output="o"):
    code, out, err = run_cli(["train", "--output", str(tmp_path / output), "--val-size", "0", *argv], capsys)
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err + out
    assert expected in text, text
    assert text.count("error:") == 1 and text.rstrip().endswith(".")
    assert not (tmp_path / output / "dllm_peft_adapter.safetensors").exists()
    assert not (tmp_path / output / "dllm_peft_adapter.json").exists()
    return text


def write(path, text):
    path.write_text(text)
    return str(path)


def test_missing_file(tmp_path, capsys):
    refused(tmp_path, capsys, ["--data", "missing.jsonl"], "data file 'missing.jsonl' does not exist")


def test_malformed_json_line_names_its_line(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": }\n')
    refused(tmp_path, capsys, ["--data", data], "d.jsonl:2: not a valid JSON line")


def test_empty_dataset(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", "\n\n")
    refused(tmp_path, capsys, ["--data", data], "holds no examples")


def test_absent_fields_list_the_present_ones(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", '{"question": "a", "answer": "b"}\n')
    refused(tmp_path, capsys, ["--data", data], "no 'prompt'/'response' fields (present: answer, question)")


def test_every_example_too_long(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", '{"prompt": "a long prompt", "response": "and a long answer"}\n')
    expected = "all 1 examples exceed --max-length 8 (longest 31)"
    refused(tmp_path, capsys, ["--data", data, "--max-length", "8"], expected)


def test_nan_loss_stops_and_saves_no_checkpoint_from_the_diverging_update(tmp_path, capsys):
    argv = ["--lr", "1e30", "--save-every", "1", "--rank", "4", "--max-steps", "20"]
    text = refused(tmp_path, capsys, argv, "the loss became nan at step 2, so that step was not applied; lower --lr")
    assert "no adapter was written" in text  # step 1's update (lr 1e30) led to the NaN: its state is not saved
    assert not (tmp_path / "o" / "checkpoints" / "step-1").exists()


def test_output_holding_a_different_run(tmp_path, capsys):
    argv = ["train", "--output", str(tmp_path / "o"), "--max-steps", "1", "--rank", "4", "--val-size", "0"]
    code, _, _ = run_cli(argv, capsys)
    assert code in (0, None)
    before = (tmp_path / "o" / "dllm_peft_adapter.safetensors").read_bytes()
    expected = f"already holds a nara run on {DEFAULT_DATA}; pass --overwrite to replace it, --resume to continue it"
    code, _, err = run_cli(["train", "--output", str(tmp_path / "o"), "--method", "lora", "--val-size", "0"], capsys)
    assert code == 2 and expected in " ".join(err.split())
    assert (tmp_path / "o" / "dllm_peft_adapter.safetensors").read_bytes() == before  # untouched


def test_overwrite_replaces_our_files_only(tmp_path, capsys):
    (tmp_path / "o" / "checkpoints" / "step-9").mkdir(parents=True)
    (tmp_path / "o" / "train_config.json").write_text(json.dumps({"method": "lora", "data": "x"}))
    (tmp_path / "o" / "notes.txt").write_text("mine")
    argv = ["train", "--output", str(tmp_path / "o"), "--overwrite", "--max-steps", "1", "--rank", "4"]
    argv += ["--val-size", "0"]
    code, _, _ = run_cli(argv, capsys)
    assert code in (0, None)
    assert not (tmp_path / "o" / "checkpoints" / "step-9").exists() and (tmp_path / "o" / "notes.txt").exists()
    assert json.loads((tmp_path / "o" / "train_config.json").read_text())["method"] == "nara"


def test_resume_needs_a_run_and_mixed_precision_needs_cuda(tmp_path, capsys):
    refused(tmp_path, capsys, ["--resume"], "holds no training run to resume; drop --resume to start one")
    if not torch.cuda.is_available():
        refused(tmp_path, capsys, ["--precision", "bf16"], "--precision bf16 needs a CUDA device")
    with pytest.raises(DllmPeftError, match="neither --max-steps nor --epochs"):
        TrainConfig(max_steps=None)


def test_metrics_log_feeds_tensorboard_and_drops_what_a_killed_run_wrote_after_its_checkpoint(tmp_path, monkeypatch):
    class RecordingWriter:
        runs: list = []

        def __init__(self, log_dir, purge_step=None):
            self.scalars = []
            RecordingWriter.runs.append((log_dir, purge_step, self.scalars))

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=RecordingWriter))
    with MetricsLog(tmp_path) as log:
        for step in (1, 2, 3):
            log.write("train", step, {"loss": 5.0 - step, "lr": 0.1})
        log.write("validation", 3, {"loss": 1.5, "loss_by_noise_level": {"0.1": 1.0, "0.9": 2.0}, "examples": 4})
    (tmp_path / "metrics.jsonl").open("a").write('{"kind": "train", "step": 4, "lo')  # cut short by a SIGKILL
    with MetricsLog(tmp_path, resume_step=2):
        pass
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("train", 1), ("train", 2)]
    (_, first_purge, scalars), (_, resume_purge, _) = RecordingWriter.runs
    assert first_purge is None and resume_purge == 3
    assert ("validation/loss_by_noise_level/0.9", 2.0, 3) in scalars and ("train/lr", 0.1, 2) in scalars


# -- --adapter-option: method-specific settings, part of what a run trains -------------------------------------------
def test_adapter_option_sets_the_method_config_and_cannot_change_on_resume(tmp_path, capsys):
    output = str(tmp_path / "o")
    argv = ["train", "--method", "multilora", "--adapter-option", "bins=2", "--output", output, "--max-steps", "2",
            "--rank", "4", "--val-size", "0", "--save-every", "1"]
    code, _, _ = run_cli(argv, capsys)
    assert code in (0, None)
    assert read_adapter(output)[0]["bins"] == 2  # the default is 4
    assert json.loads((tmp_path / "o" / "train_config.json").read_text())["adapter_option"] == ["bins=2"]
    code, _, err = run_cli(["train", "--output", output, "--resume", "--adapter-option", "bins=3"], capsys)
    assert code == 2 and "--adapter-option ('bins=3',) differs from the run being resumed" in " ".join(err.split())
    code, _, _ = run_cli(["train", "--output", output, "--resume", "--max-steps", "3"], capsys)  # keeps bins=2
    assert code in (0, None) and read_adapter(output)[0]["bins"] == 2


def test_adapter_option_in_a_settings_file(tmp_path, capsys):
    settings = write(tmp_path / "run.yaml", "method: trajectory\nadapter-option: {ranks: [4, 2, 1], modules: 1}\n")
    code, _, _ = run_cli(["train", "--config", settings, "--output", str(tmp_path / "o"), "--max-steps", "1",
                          "--val-size", "0"], capsys)
    assert code in (0, None)
    record = read_adapter(tmp_path / "o")[0]
    assert record["ranks"] == [4, 2, 1] and record["modules"] == 1


def test_adapter_option_values_take_the_field_types_and_mistakes_list_the_valid_keys(tmp_path, capsys):
    config = TrainConfig(method="nara", adapter_option=["hidden_sizes=32,64", "embedding=mlp", "groups=q_proj;v_proj"])
    assert config.adapter_option == ("hidden_sizes=32,64", "embedding=mlp", "groups=q_proj;v_proj")
    assert adapter_settings(config.method, config.adapter_option) == {"hidden_sizes": (32, 64), "embedding": "mlp", "groups": (("q_proj",), ("v_proj",))}
    keys = "valid keys for multilora: scale, bins"
    refused(tmp_path, capsys, ["--method", "multilora", "--adapter-option", "bins=two"], f"'two' is not an integer; {keys}")
    refused(tmp_path, capsys, ["--method", "multilora", "--adapter-option", "binz=2"], f"known key; {keys}")
    refused(tmp_path, capsys, ["--method", "lora", "--adapter-option", "rank=8"], "rank has its own flag, pass --rank")
    refused(tmp_path, capsys, ["--method", "multilora", "--adapter-option", "bins=0"], "bins must be a positive integer")
