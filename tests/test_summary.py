"""Inspect: the low-rank route equals the dense computation, the file alone suffices, LoRA is flat and NaRA is not,
and the command prints its per-λ table, writes its PNG and JSON, and refuses damaged files in one sentence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dllm_peft.adapters.base import (
    adapter_layers,
    adapter_state_dict,
    trainable_parameters,
)
from dllm_peft.adapters.files import WEIGHTS_FILE, save_adapter
from dllm_peft.adapters.registry import METHODS
from dllm_peft.adapters.summary import (
    AdapterSummary,
    adapter_in_backbone,
    effective_rank,
    standalone_adapter,
    summarize,
)
from dllm_peft.models import tiny_llada

from .test_merge import random_adapter, refused, rewritten, run

LEVELS = 5
MERGEABLE = sorted(name for name, method in METHODS.items() if method.mergeable)
LOW_RANK = [name for name in MERGEABLE if getattr(METHODS[name].layer_class, "low_rank_factors", None) is not None]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One randomised adapter file per mergeable method (and two that are not), with the model it came from."""
    root = tmp_path_factory.mktemp("adapters")
    adapters = {}
    for method in [*MERGEABLE, "prompt", "houlsby"]:
        backbone = random_adapter(method)
        save_adapter(backbone, root / method)
        adapters[method] = (root / method, backbone)
    return adapters


def dense_numbers(layer, level):
    """‖ΔW‖_F and the effective rank from the full (out, in) update, for comparison."""
    with torch.no_grad():
        singular = torch.linalg.svdvals(layer.delta_weight(level).double())
    shares = singular / singular.sum()
    return singular.square().sum().sqrt().item(), math.exp(-(shares * shares.log()).sum().item())


@pytest.mark.parametrize("method", MERGEABLE)
def test_reported_numbers_equal_the_dense_computation(method, saved):
    """Low-rank methods go through the r × r route from the file alone; the others through the loaded model."""
    path, backbone = saved[method]
    if method in LOW_RANK:
        parts = standalone_adapter(path / WEIGHTS_FILE)
    else:
        parts = adapter_in_backbone(tiny_llada(seed=0), path)
    summary = summarize(parts, levels=3)
    assert summary.table_note is None and len(summary.module_norms) == 8
    for name, layer in adapter_layers(backbone.model).items():
        if METHODS[method].noise_dependent:
            expected = [dense_numbers(layer, level) for level in summary.levels]
        else:
            expected = [dense_numbers(layer, None)] * len(summary.levels)
        assert summary.module_norms[name] == pytest.approx([norm for norm, _ in expected], rel=1e-5)
        assert summary.module_effective_ranks[name] == pytest.approx([rank for _, rank in expected], rel=1e-5)


@pytest.mark.parametrize("method", LOW_RANK)
def test_low_rank_factors_multiply_to_the_update(method, saved):
    """Guard for new methods: a layer offering low_rank_factors must have ΔW = left @ right."""
    for layer in adapter_layers(saved[method][1].model).values():
        level = 0.4 if METHODS[method].noise_dependent else None
        left, right = layer.low_rank_factors(level)
        torch.testing.assert_close(left @ right, layer.delta_weight(level))


def test_updates_that_read_the_base_weights_ask_for_the_model(saved):
    alone = summarize(standalone_adapter(saved["dora"][0]), LEVELS)
    assert not alone.module_norms and "reads the base weights" in alone.table_note and "--model" in alone.table_note
    assert alone.trainable_parameters == 8 * (4 * 64 + 64 * 4 + 64)  # A, B and the magnitude m per module


def test_methods_without_a_weight_update_report_their_parameters(saved):
    prompt_path, prompt_backbone = saved["prompt"]
    alone = summarize(standalone_adapter(prompt_path), LEVELS)
    stored = sum(t.numel() for t in adapter_state_dict(prompt_backbone.model).values())
    assert alone.trainable_parameters is None and alone.stored_values == stored
    assert "no weight update" in alone.table_note
    loaded = summarize(adapter_in_backbone(tiny_llada(seed=0), prompt_path), LEVELS)
    assert loaded.trainable_parameters == sum(p.numel() for p in trainable_parameters(prompt_backbone.model))
    houlsby = summarize(standalone_adapter(saved["houlsby"][0]), LEVELS)
    assert houlsby.trainable_parameters is None and "no weight update" in houlsby.table_note


def test_the_file_alone_gives_the_same_report_as_the_loaded_model(saved):
    path, _ = saved["nara"]
    alone = summarize(standalone_adapter(path / WEIGHTS_FILE), LEVELS)
    parts = adapter_in_backbone(tiny_llada(seed=0), path)
    with_model = summarize(parts, LEVELS)
    for name, norms in alone.module_norms.items():
        assert norms == pytest.approx(with_model.module_norms[name], rel=1e-6)
    assert alone.trainable_parameters == with_model.trainable_parameters
    assert alone.base_parameters is None
    base_count = sum(p.numel() for p in tiny_llada(seed=0).model.parameters())
    assert with_model.base_parameters == base_count


def test_parameter_counts_follow_the_method_formulas(saved):
    rank, width, modules = 4, 64, 8
    lora = summarize(standalone_adapter(saved["lora"][0]), 2)
    assert lora.trainable_parameters == modules * rank * (width + width) and lora.shared_parameters == 0
    nara = summarize(standalone_adapter(saved["nara"][0]), 2)
    hypernetwork = (64 * 256 + 256) + (256 * 512 + 512) + (512 * rank**2 + rank**2)
    assert nara.shared_parameters == hypernetwork  # the Fourier frequencies are a buffer, not trained
    assert nara.trainable_parameters == lora.trainable_parameters + hypernetwork


def test_lora_is_flat_and_nara_is_not(saved):
    lora = summarize(standalone_adapter(saved["lora"][0]), LEVELS)
    nara = summarize(standalone_adapter(saved["nara"][0]), LEVELS)
    constant = summarize(standalone_adapter(saved["nara-c"][0]), LEVELS)
    assert len(set(lora.total_norms)) == 1 and not lora.core_deviation
    assert len(set(constant.total_norms)) == 1 and len(set(constant.core_deviation["shared"])) == 1
    assert max(nara.total_norms) - min(nara.total_norms) > 1e-3
    router = saved["nara"][1].model.dllm_peft_router
    with torch.no_grad():
        core = router.shared["shared"](torch.tensor([0.75]))[0]
    assert nara.core_deviation["shared"][3] == pytest.approx(torch.linalg.matrix_norm(core - torch.eye(4)).item())


def test_effective_rank_golden_values():
    assert effective_rank(torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(entropy))
    assert effective_rank(torch.zeros(3)) == 0.0


def test_aggregates_are_norms_of_the_stacked_updates():
    summary = AdapterSummary(
        source="", method="lora", base_model=None, settings={}, noise_dependent=False, stored_values=0,
        trainable_parameters=0, shared_parameters=0, base_parameters=None, levels=[0.0, 1.0], core_deviation={},
        module_norms={"b.0.q": [3.0, 1.0], "b.0.v": [4.0, 1.0], "b.10.q": [1.0, 0.0], "b.2.q": [2.0, 2.0]},
        module_effective_ranks={"b.0.q": [1.0, 2.0], "b.0.v": [3.0, 2.0], "b.10.q": [1.0, 1.0], "b.2.q": [2.0, 3.0]},
    )
    assert summary.norms_by_layer == {"0": [5.0, math.sqrt(2)], "2": [2.0, 2.0], "10": [1.0, 0.0]}
    assert summary.norms_by_type == {"q": [math.sqrt(14), math.sqrt(5)], "v": [4.0, 1.0]}
    assert summary.total_norms == [math.sqrt(30), math.sqrt(6)]
    assert summary.effective_rank_by_type == {"q": [4 / 3, 2.0], "v": [3.0, 2.0]}


def test_inspect_prints_the_table_and_writes_png_and_json(saved, tmp_path, capsys):
    file = saved["nara"][0] / WEIGHTS_FILE
    code, out, _ = run(["inspect", str(file), "--plot", str(tmp_path / "nara.png")], capsys)
    assert code in (0, None)
    for text in ("nara adapter", "tiny-llada", "q_proj", "attn_out", "‖C−I‖", "eff. rank", "per layer"):
        assert text in out
    labels = [f"{i / 10:.2f}" for i in range(11)]  # the default grid: 11 levels from 0 to 1
    first_words = [line.split()[0] for line in out.splitlines() if line.split()]
    assert [word for word in first_words if word in labels] == labels
    png = (tmp_path / "nara.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000  # four drawn panels, not an empty canvas
    code, out, _ = run(["inspect", str(file), "--json", "--levels", "3"], capsys)
    report = json.loads(out)
    assert report["levels"] == [0.0, 0.5, 1.0] and report["method"] == "nara"
    assert set(report["norms_by_type"]) == {"q_proj", "k_proj", "v_proj", "attn_out"}
    assert set(report["norms_by_layer"]) == {"0", "1"} and len(report["module_norms"]) == 8


def test_inspect_refuses_bad_input_in_one_sentence(saved, tmp_path, capsys):
    path = saved["lora"][0]
    data = (path / WEIGHTS_FILE).read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 3])
    refused(["inspect", str(tmp_path / "truncated.safetensors")], capsys, "is not a readable safetensors adapter file")
    (tmp_path / "notes.txt").write_text("hello")
    refused(["inspect", str(tmp_path / "notes.txt")], capsys, "is not a readable safetensors adapter file")
    unknown = rewritten(path, tmp_path, lambda record, tensors: record.update(method="mystery"))
    refused(["inspect", str(unknown)], capsys, "unknown method 'mystery'; choose one of: lora")
    refused(["inspect", str(path), "--levels", "1"], capsys, "--levels must lie in [2, 1001]")
    refused(["inspect", str(tmp_path / "missing")], capsys, "does not exist")
    wider = random_adapter("lora", d_model=32)
    save_adapter(wider, tmp_path / "wider")
    refused(["inspect", str(tmp_path / "wider"), "--model", "tiny-llada"], capsys, "has shape")


def test_inspect_header_wraps_long_values_under_themselves_in_a_narrow_terminal(saved, monkeypatch, capsys):
    import io

    from rich.console import Console

    from dllm_peft.cli import inspect_command

    screen = io.StringIO()
    monkeypatch.setattr(inspect_command, "out", Console(file=screen, force_terminal=True, width=60, color_system=None))
    code, _, _ = run(["inspect", str(saved["nara"][0] / WEIGHTS_FILE), "--levels", "2"], capsys)
    lines = screen.getvalue().splitlines()
    assert code in (0, None) and all(len(line) <= 60 for line in lines)
    settings = next(index for index, line in enumerate(lines) if line.startswith("  settings     "))
    assert lines[settings + 1].startswith(" " * 15) and lines[settings + 1].strip()  # the value goes on, indented
