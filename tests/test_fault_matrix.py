"""The fault matrix (issue 18): a careless or hostile user's bad inputs across every subcommand.

Each case asserts exit status 2, exactly one line on stderr (one sentence naming the value), no traceback, and that no
file was created, changed or removed anywhere in the test's directories. Every case fails before a model is trained
or a sampler runs, so the whole matrix takes seconds (in-process CLI).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dllm_peft.adapters.files import CONFIG_FILE, WEIGHTS_FILE, save_adapter
from dllm_peft.cli import main

from .test_merge import random_adapter

GOOD = '{"prompt": "a", "response": "b"}\n'


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Adapters and data files the cases read (shared, checked unchanged by every case)."""
    root = tmp_path_factory.mktemp("inputs")
    save_adapter(random_adapter("lora"), root / "lora")
    save_adapter(random_adapter("nara"), root / "nara")
    save_adapter(random_adapter("houlsby"), root / "houlsby")
    save_adapter(random_adapter("lora"), root / "mixed")  # adapter_config.json says nara, the weights say lora
    record = json.loads((root / "mixed" / CONFIG_FILE).read_text())
    (root / "mixed" / CONFIG_FILE).write_text(json.dumps({**record, "method": "nara"}))
    (root / "truncated").mkdir()
    data = (root / "lora" / WEIGHTS_FILE).read_bytes()
    (root / "truncated" / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    (root / "random").mkdir()
    (root / "random" / WEIGHTS_FILE).write_bytes(os.urandom(4096))
    (root / "empty-adapter").mkdir()
    (root / "empty-adapter" / WEIGHTS_FILE).write_bytes(b"")
    files = {
        "empty.jsonl": b"",
        "blank.jsonl": b"\n\n",
        "truncated.jsonl": (GOOD + '{"prompt": "a", "resp').encode(),
        "random.jsonl": os.urandom(2048),
        "latin1.jsonl": '{"prompt": "café", "response": "b"}\n'.encode("latin-1"),
        "utf16.jsonl": GOOD.encode("utf-16"),
        "objects.jsonl": b'{"prompt": {"text": "a"}, "response": "b"}\n',
        "booleans.jsonl": b'{"prompt": "a", "response": true}\n',
        "lists.jsonl": b'{"prompt": "a", "response": ["b", "c"]}\n',
        "empty-pair.jsonl": b'{"prompt": "", "response": ""}\n',
        "array.json": b'{"prompt": "a"}',
        "fields.jsonl": b'{"question": "a", "answer": "b"}\n',
        "prompts.txt": "one\n\ntwo\n".encode(),
        "prompts-latin1.txt": "café\n".encode("latin-1"),
        "settings.toml": b"rank = 'many'\n",
        "settings.yaml": b"rank: [1, 2\n",
        "a-file": b"x",
        "mine.md": b"my notes\n",
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


# (case id, argv with {in} = the inputs folder and {out} = a fresh folder, words the one sentence must hold)
CASES = [
    # train: data files
    ("train-missing-data", ["train", "--data", "{in}/nope.jsonl"], "nope.jsonl"),
    ("train-empty-data", ["train", "--data", "{in}/empty.jsonl"], "no examples"),
    ("train-blank-data", ["train", "--data", "{in}/blank.jsonl"], "no examples"),
    ("train-truncated-data", ["train", "--data", "{in}/truncated.jsonl"], "truncated.jsonl:2: not a valid JSON line"),
    ("train-random-bytes", ["train", "--data", "{in}/random.jsonl"], "save the file as UTF-8"),
    ("train-latin1", ["train", "--data", "{in}/latin1.jsonl"], "latin1.jsonl:1: byte 0xe9 is not UTF-8"),
    ("train-utf16", ["train", "--data", "{in}/utf16.jsonl"], "is not UTF-8 text"),
    ("train-object-field", ["train", "--data", "{in}/objects.jsonl"], "'prompt' is not a string (dict"),
    ("train-bool-field", ["train", "--data", "{in}/booleans.jsonl"], "'response' is not a string (bool True)"),
    ("train-list-field", ["train", "--data", "{in}/lists.jsonl"], "'response' is not a string (list"),
    ("train-empty-prompt-response", ["train", "--data", "{in}/empty-pair.jsonl"], "has an empty response"),
    ("train-json-object", ["train", "--data", "{in}/array.json"], "expected an array of objects"),
    ("train-wrong-fields", ["train", "--data", "{in}/fields.jsonl"], "present: answer, question"),
    # train: numbers and names
    ("train-epochs-inf", ["train", "--epochs", "inf"], "--epochs must be a positive finite number, got inf"),
    ("train-epochs-nan", ["train", "--epochs", "nan"], "--epochs must be a positive finite number, got nan"),
    ("train-epochs-zero", ["train", "--epochs", "0"], "--epochs must be a positive finite number, got 0"),
    ("train-lr-nan", ["train", "--lr", "nan"], "--lr must be a positive finite number, got nan"),
    ("train-lr-inf", ["train", "--lr", "inf"], "--lr must be a positive finite number, got inf"),
    ("train-lr-negative", ["train", "--lr", "-1"], "--lr must be a positive finite number, got -1"),
    ("train-max-steps-zero", ["train", "--max-steps", "0"], "--max-steps must be at least 1, got 0"),
    ("train-max-steps-text", ["train", "--max-steps", "many"], "invalid value for '--max-steps'"),
    ("train-rank-negative", ["train", "--rank", "-4"], "--rank must be at least 1, got -4"),
    ("train-dropout-one", ["train", "--dropout", "1"], "--dropout must lie in [0, 1), got 1"),
    ("train-eta-nan", ["train", "--eta", "nan"], "--eta must be a finite number, got nan"),
    ("train-unknown-method", ["train", "--method", "loraa"], "unknown --method 'loraa'"),
    ("train-unknown-recipe", ["train", "--recipe", "fast"], "unknown --recipe 'fast'"),
    ("train-unknown-flag", ["train", "--rnak", "4"], "no such option: --rnak"),
    ("train-bad-noise-levels", ["train", "--val-noise-levels", "0.5,x"], "--val-noise-levels '0.5,x'"),
    ("train-settings-toml-type", ["train", "--config", "{in}/settings.toml"], "rank"),
    ("train-settings-yaml-broken", ["train", "--config", "{in}/settings.yaml"], "is not valid YAML"),
    ("train-resume-nothing", ["train", "--resume"], "holds no training run to resume"),
    # train: outputs
    ("train-output-is-file", ["train", "--output", "{in}/a-file"], "is a file; name a directory"),
    ("train-output-under-file", ["train", "--output", "{in}/a-file/out"], "lies under the file"),
    ("train-output-in-proc", ["train", "--output", "/proc/dllm-peft-out"], "lies inside /proc"),
    ("train-output-holds-adapter", ["train", "--output", "{in}/lora"], "already holds an adapter; pass --overwrite"),
    # sample
    ("sample-temperature-nan", ["sample", "--prompt", "hi", "--temperature", "nan"], "--temperature must be a finite"),
    ("sample-temperature-inf", ["sample", "--prompt", "hi", "--temperature", "inf"], "got inf"),
    ("sample-steps-over-length", ["sample", "--prompt", "hi", "--steps", "64", "--gen-length", "8", "--block-length", "8"],
     "--steps 64 is more than --gen-length 8"),
    ("sample-gen-length-zero", ["sample", "--prompt", "hi", "--gen-length", "0"], "must be at least 1"),
    ("sample-threshold-nan", ["sample", "--prompt", "hi", "--threshold", "nan"], "--threshold must lie in (0, 1]"),
    ("sample-cfg-negative", ["sample", "--prompt", "hi", "--cfg-scale", "-1"], "--cfg-scale must be a finite number"),
    ("sample-unknown-remasking", ["sample", "--prompt", "hi", "--remasking", "best"], "unknown --remasking 'best'"),
    ("sample-no-prompt", ["sample"], "pass exactly one of --prompt TEXT or --prompts-file FILE"),
    ("sample-blank-prompt-line", ["sample", "--prompts-file", "{in}/prompts.txt"], "prompts.txt:2: the prompt is empty"),
    ("sample-latin1-prompts", ["sample", "--prompts-file", "{in}/prompts-latin1.txt"], "is not UTF-8 text"),
    ("sample-output-is-dir", ["sample", "--prompt", "hi", "--output", "{in}"], "is a directory; name a file"),
    ("sample-output-under-file", ["sample", "--prompt", "hi", "--output", "{in}/a-file/r.jsonl"], "lies under the file"),
    ("sample-truncated-adapter", ["sample", "--prompt", "hi", "--adapter", "{in}/truncated"], "not a readable"),
    ("sample-random-adapter", ["sample", "--prompt", "hi", "--adapter", "{in}/random"], "not a readable"),
    ("sample-empty-adapter", ["sample", "--prompt", "hi", "--adapter", "{in}/empty-adapter"], "not a readable"),
    ("sample-mixed-adapter", ["sample", "--prompt", "hi", "--adapter", "{in}/mixed"], "names method 'nara' but"),
    ("sample-shape-mismatch", ["sample", "--prompt", "hi", "--adapter", "{in}/lora", "--model", "dllm-tiny"],
     "does not fit this model"),
    ("sample-unknown-model", ["sample", "--prompt", "hi", "--model", "no-such-model"], "no-such-model"),
    # eval
    ("eval-unknown-task", ["eval", "--tasks", "nosuchtask"], "nosuchtask"),
    ("eval-output-under-file", ["eval", "--output", "{in}/a-file/r.json"], "lies under the file"),
    ("eval-output-in-proc", ["eval", "--output", "/proc/r.json"], "lies inside /proc"),
    ("eval-foreign-markdown", ["eval", "--output", "{in}/mine.json"], "mine.md', which exists and was not written"),
    ("eval-limit-zero", ["eval", "--limit", "0"], "--limit must be at least 1, got 0"),
    ("eval-steps-over-length", ["eval", "--steps", "64", "--gen-length", "8"], "--steps 64 is more than --gen-length 8"),
    ("eval-temperature-nan", ["eval", "--temperature", "nan"], "--temperature must be a finite"),
    # merge / export
    ("merge-shard-size-text", ["merge", "--adapter", "{in}/lora", "--max-shard-size", "lots"], "--max-shard-size 'lots'"),
    ("merge-shard-size-unitless", ["merge", "--adapter", "{in}/lora", "--max-shard-size", "500"], "is not a size"),
    ("merge-noise-level-nan", ["merge", "--adapter", "{in}/nara", "--noise-level", "nan"], "--noise-level must lie"),
    ("merge-nara-without-level", ["merge", "--adapter", "{in}/nara", "--output", "{out}/m"], "choose the λ"),
    ("merge-missing-adapter", ["merge", "--adapter", "{in}/nope", "--output", "{out}/m"], "does not exist"),
    ("merge-output-is-input", ["merge", "--adapter", "{in}/lora", "--output", "{in}/lora", "--overwrite"],
     "would replace the input"),
    ("merge-output-not-empty", ["merge", "--adapter", "{in}/lora", "--output", "{in}/nara"], "is not empty"),
    ("merge-output-in-proc", ["merge", "--adapter", "{in}/lora", "--output", "/proc/merged"], "lies inside /proc"),
    ("export-houlsby", ["export", "--adapter", "{in}/houlsby", "--output", "{out}/p"], "no low-rank update to fold into the base weights or to export"),
    ("export-unknown-format", ["export", "--adapter", "{in}/lora", "--format", "gguf"], "unknown --format 'gguf'"),
    ("export-noise-level-inf", ["export", "--adapter", "{in}/nara", "--noise-level", "inf"], "--noise-level must lie"),
    ("export-output-under-file", ["export", "--adapter", "{in}/lora", "--output", "{in}/a-file/p"], "under the file"),
    # inspect
    ("inspect-levels-huge", ["inspect", "{in}/lora", "--levels", "5000000"], "--levels must lie in [2, 1001]"),
    ("inspect-levels-one", ["inspect", "{in}/lora", "--levels", "1"], "--levels must lie in [2, 1001]"),
    ("inspect-levels-text", ["inspect", "{in}/lora", "--levels", "ten"], "invalid value for '--levels'"),
    ("inspect-plot-not-png", ["inspect", "{in}/lora", "--plot", "{out}/p.jpg"], "must name a .png file"),
    ("inspect-plot-unwritable", ["inspect", "{in}/lora", "--plot", "/proc/p.png"], "lies inside /proc"),
    ("inspect-plot-under-file", ["inspect", "{in}/lora", "--plot", "{in}/a-file/p.png"], "lies under the file"),
    ("inspect-truncated", ["inspect", "{in}/truncated"], "not a readable"),
    ("inspect-missing", ["inspect", "{in}/nope"], "does not exist"),
    ("inspect-missing-argument", ["inspect"], "missing argument"),
    ("unknown-command", ["trian"], "no such command 'trian'"),
]


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in root.rglob("*")
    }


@pytest.mark.parametrize("argv, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(argv, expected, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --output ("out", "merged", ...) would land here
    out = tmp_path / "work"
    out.mkdir()
    argv = [part.replace("{in}", str(inputs)).replace("{out}", str(out)) for part in argv]
    before = snapshot(inputs, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(inputs, tmp_path) == before


def test_the_matrix_covers_every_subcommand():
    assert len(CASES) >= 40
    assert {case[1][0] for case in CASES} >= {"train", "sample", "eval", "merge", "export", "inspect"}


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """SIGINT while the CLI is still importing its modules: no traceback (`__main__.run`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "dllm_peft", "train", "--output", str(tmp_path / "o")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.3)  # inside the imports (typer, rich, torch take longer than this)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    # during the imports: the one line; once training runs (start-up is quick now) the graceful stop's line comes last
    assert "interrupted" in lines[-1] or "stopped" in lines[-1], err
    assert len(lines) == 1 or lines[-1].startswith("stopped"), err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
