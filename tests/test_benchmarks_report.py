"""benchmarks/report.py renders the README tables from the benchmark JSON files; every benchmark script keeps the
contract run_all.py relies on (`--quick` and `--output`)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import report  # noqa: E402  (benchmarks/report.py)
import run_all  # noqa: E402  (benchmarks/run_all.py)

SAMPLER = {
    "mode": "full",
    "wall_seconds": 313.1,
    "reference": {"ratio_ours_vs_reference": 1.011, "tokens_per_second": {"reference": 209.2, "ours": 211.5}},
    "fast": {"threshold": 0.9, "variants": {"threshold+dual": {"speedup_vs_reference": 19.98,
                                                               "answers_equal_to_reference": "6/8"}}},
    "nara_vs_lora": [{"model": "dllm-tiny", "parameters": 920704, "ratio_nara_vs_lora": 1.185,
                      "ratio_lora_copy_vs_lora": 0.961}],
    "accuracy": {"task": "lastdigit", "exact_match": {
        "default": {"exact_match": 49.61, "documents": 256, "drop_points": 0.0, "speedup_vs_default": 1.0},
        "threshold+dual": {"exact_match": 56.64, "documents": 256, "drop_points": -7.03, "speedup_vs_default": 11.9},
        "threshold": {"exact_match": 43.36, "documents": 256, "drop_points": 6.25, "speedup_vs_default": 10.31},
    }},
}
DIFFERENCE = {"n": 3, "mean": 12.0, "std": 2.0, "low": 7.03, "high": 16.97, "contains_zero": False,
              "decided": True, "verdict": "NaRA beats LoRA: +12.00 points, 95 % CI [+7.03, +16.97], n = 3"}
MINIATURE = {
    "mode": "full",
    "wall_seconds": 1800.0,
    "model": "dllm-tiny",
    "base_parameters": 920704,
    "rank": 8,
    "comparisons": {"nara": {"title": "NaRA paper's comparison", "tasks": ["lastdigit"], "arms": ["lora", "nara"]}},
    "settings": {"seeds": [0, 1, 2], "mc_num": 2, "levels": [0.1, 0.5], "loss_count": 64, "generate": 32},
    "tasks": {"lastdigit": {
        "steps": 200, "train_examples": 4000, "test_items": 200,
        "base": {"accuracy": 9.5, "mean_loss": 4.2, "exact_match": 0.0},
        "arms": [
            {"arm": "lora", "label": "LoRA", "trainable_parameters": 32768, "trainable_share": 0.0356,
             "storage_bytes": 133120, "steps_to_90": [80, 90, 100], "accuracy": {"mean": 60.0, "std": 10.0},
             "mean_loss": {"mean": 1.2345, "std": 0.01}, "exact_match": {"mean": 30.0, "std": 5.0}},
            {"arm": "nara", "label": "NaRA", "trainable_parameters": 33348, "trainable_share": 0.0362,
             "storage_bytes": 136192, "steps_to_90": [70, None, 90],
             "accuracy": {"mean": 72.0, "std": 2.0, "vs_lora": DIFFERENCE},
             "mean_loss": {"mean": 1.2, "std": 0.02, "vs_lora": {"n": 3, "mean": -0.0345, "std": 0.05, "low": -0.16,
                                                                 "high": 0.09, "contains_zero": True, "decided": False,
                                                                 "verdict": "x"}},
             "exact_match": {"mean": 35.0, "std": 4.0, "vs_lora": DIFFERENCE}},
        ],
        "power": {"n": 3, "median_std": 2.0, "detectable_points": 6.3, "seeds_for_2_points": 9},
        "against_paper": None,
    }},
    "plots": ["miniature_figure1_loss_reduction.png", "miniature_val_loss_vs_noise.png"],
}


def test_performance_table_shows_each_ratio_with_its_goal_and_verdict():
    results = {
        "sampler": SAMPLER,
        "train_throughput": {"ratios": {"nara_over_lora_step_time": 1.02, "ours_over_peft_lora_tokens_per_second": 0.975}},
        "loglikelihood": {"results": [
            {"workload": "short", "mc_num": 8, "speedup": 1.45}, {"workload": "short", "mc_num": 32, "speedup": 4.67},
            {"workload": "long", "mc_num": 32, "speedup": 1.09},
        ]},
        "multiprocess_equivalence": {"train_loss_max_relative_difference": 4.6e-8,
                                     "validation_loss_max_relative_difference": 3.5e-8, "loss_tolerance": 1e-5},
    }
    table = report.render_performance(results)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 1.011 (212 vs 209 tokens/s) | ≥ 1.0 | met |" in rows["`sample()` vs the reference loop, tokens/s "
                                                                   "(gen 64, steps 64, one block)"]
    assert "20.0× (answers equal to the reference's: 6/8) | ≥ 4 | met" in table
    assert "| 1.185 (LoRA vs an identical LoRA: 0.961) | ≤ 1.03 | **not met** |" in table
    assert ("| -7.0 (49.6 % → 56.6 % on `lastdigit`, 256 prompts, evaluation 11.9× faster) | ≤ 1 | met |"
            in rows["accuracy drop of threshold + dual vs the default sampler, points"])
    assert "| 6.2 (49.6 % → 43.4 %" in rows["accuracy drop of threshold vs the default sampler, points"]
    assert "| 1.020 | ≤ 1.05 | met |" in table and "| 0.975 | ≥ 1.0 | **not met** |" in table
    assert "1.45× at mc_num 8, 4.67× at mc_num 32 | ≥ 3 | met at mc_num 32 |" in table
    assert "1.09× at mc_num 32 | ≥ 3 | **not met** |" in table
    assert "| 4.6e-08 | ≤ 1e-05 | met |" in table
    # Figures the files do not have are dashes, not errors: peak RSS, backbone loading, the adapter gap.
    assert "our LoRA / PEFT's LoRA, peak RSS of training | — | ≤ 1.0 | — |" in table
    assert "`backbone_loading.json` missing" in table and "`sampler.json` (full, 313 s)" in table


def test_loglikelihood_suite_rows_replace_the_per_task_rows_and_get_their_own_block():
    results = {"loglikelihood": {
        "command": "python benchmarks/loglikelihood/run.py", "mode": "full", "wall_seconds": 1200.4,
        "bpe_tokenizer": {"vocabulary": 32000, "training_seconds": 9.6},
        "table": "| workload | mc_num 128 |\n|---|---|\n| boolq | 50.0× (60.0×) |",
        "results": [
            {"workload": "boolq", "mc_num": 128, "speedup": 50.0, "max_abs_difference": 2e-6},
            {"workload": "commonsense, 2 tasks (BPE tokens)", "suite_of": ["boolq", "piqa"], "mc_num": 128,
             "speedup": 2.5, "max_abs_difference": 3e-5},
        ]}}
    performance = report.render_performance(results)
    assert "vs one request at a time: commonsense, 2 tasks (BPE tokens) | 2.50× at mc_num 128 | ≥ 3 | **not met** |" \
        in performance
    assert ": boolq |" not in performance
    block = report.render_loglikelihood(results)
    assert block.startswith("| workload | mc_num 128 |") and "| boolq | 50.0× (60.0×) |" in block
    assert "mode full, 1200 s; the two arms' estimates differ by at most 3.0e-05 nats; BPE vocabulary 32,000" in block


def test_trajectory_router_block_has_a_row_per_model_and_task():
    run = {"router_weights_while_sampling": {"uppercase": {"all_steps": {"uppercase": 0.99963, "reverse": 0.00037},
                                                           "share_of_prompts_routed_to_own_task": 1.0}},
           "test_loss_at_fixed_levels": {"base": {"uppercase": 5.6885}, "uppercase adapter": {"uppercase": 3.5945},
                                         "composition": {"uppercase": 3.5941}}}
    block = report.render_trajectory_router({"trajectory_router": {"mode": "full", "wall_seconds": 33.9,
                                                                   "runs": {"tiny-llada": run}}})
    assert "| `tiny-llada` | `uppercase` | 0.9996 | 100% | 5.689 / 3.595 / 3.594 |" in block
    assert "`trajectory_router.json` (full, 34 s)" in block


def test_every_block_renders_from_no_results_at_all(tmp_path):
    blocks = report.render_blocks(tmp_path, tmp_path)
    assert set(blocks) == {"performance", "miniature", "timings", "loglikelihood", "loglikelihood_estimator",
                           "trajectory_router", "sampler", "sampler_preset"}
    assert report.MISSING in blocks["performance"] and "No `miniature.json` yet" in blocks["miniature"]
    assert "No `loglikelihood_estimator.json` yet" in blocks["loglikelihood_estimator"]


def test_the_estimator_block_shows_each_task_the_suite_and_whether_the_goal_holds():
    def row(ref128, adaptive, ratio, speedup):
        return {"questions_x_seeds": 30, "questions_judged_exactly": 12, "token_ratio": ratio, "speedup": speedup,
                "ref128": {"agree": ref128, "agree_with_ref1024": ref128},
                "adaptive": {"agree": adaptive, "agree_with_ref1024": adaptive - 1, "mean_samples_per_request": 9.5},
                "difference": {"agreements": adaptive - ref128, "ci95": [-2, 4]}}

    data = {"tasks": {"piqa (BPE tokens)": row(25, 26, 3.1, 2.9)}, "suite (both)": row(25, 26, 4.7, 5.0),
            "settings": {"stop_se": 2.0, "futility_se": 0.5, "mc_num": 128, "judge": "exact"}, "command": "c",
            "seconds": 10}
    block = report.render_loglikelihood_estimator({"loglikelihood_estimator": data})
    assert "| piqa (BPE tokens) | 30 (12) | 25 / 26 | +1 (−2 to +4) | 25 / 25 | 3.10× | 2.90× | 9.5 |" in block
    assert "| **suite (both)** | 30 (12) | 25 / 26 |" in block and "**met**" in block
    assert "adaptive − ref128 agreements: +1 (−2 to +4) (95 % interval" in block
    data["suite (both)"] = row(25, 24, 4.7, 5.0)  # fewer agreements than ref128: the goal fails whatever the speed
    assert "−1 (−2 to +4)" in report.render_loglikelihood_estimator({"loglikelihood_estimator": data})
    assert "**not met**" in report.render_loglikelihood_estimator({"loglikelihood_estimator": data})


def test_miniature_tables_show_means_paired_intervals_power_and_only_decided_claims(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "miniature.json").write_text(json.dumps(MINIATURE))
    (results / "miniature_figure1_loss_reduction.png").write_bytes(b"")
    block = report.render_blocks(results, tmp_path)["miniature"]
    assert ("| LoRA | 32,768 | 3.56 % | 130 KiB | 60.0 ± 10.0 | (reference) | 1.234 ± 0.010 | (reference) | "
            "30.0 ± 5.0 | 90 |") in block
    assert ("| NaRA | 33,348 | 3.62 % | 133 KiB | 72.0 ± 2.0 | **+12.0 [+7.0, +17.0]** | 1.200 ± 0.020 | "
            "-0.035 [-0.160, +0.090] | 35.0 ± 4.0 | 80 |") in block
    assert "| base model (no adapter) | 0 | 0 % | | 9.5 | | 4.200 | | 0.0 | |" in block
    assert "detects (α = 0.05, power 0.8) is 6.3 points; 9 seeds would detect 2 points" in block
    # the accuracy difference excludes 0 and is listed; the loss difference does not and is not
    assert "- `lastdigit`: NaRA beats LoRA: +12.00 points, 95 % CI [+7.03, +16.97], n = 3 (accuracy)" in block
    assert "(held-out loss)" not in block and "seeds 0, 1, 2, paired" in block
    assert "![miniature_figure1_loss_reduction](benchmarks/results/miniature_figure1_loss_reduction.png)" in block
    assert "(plot `miniature_val_loss_vs_noise.png` missing)" in block


def test_blocks_are_replaced_between_their_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmarks:timings -->\nold figures\n<!-- /benchmarks:timings -->\noutro\n")
    (tmp_path / "run_all.json").write_text(json.dumps(
        {"mode": "full", "benchmarks": [{"name": "sampler", "seconds": 312.6, "exit_status": 0}]}))
    assert report.update_file(readme, tmp_path) == ["timings"]
    text = readme.read_text()
    assert text.startswith("intro\n<!-- benchmarks:timings -->\n| benchmark |") and text.endswith(
        "<!-- /benchmarks:timings -->\noutro\n")
    assert "| `sampler` | — | 313 |" in text and "old figures" not in text
    assert report.update_file(readme, tmp_path) == ["timings"] and readme.read_text() == text  # idempotent


def option_strings(script: Path) -> set[str]:
    """Every option string passed to an `add_argument` call in the script (read from its source, not run)."""
    options = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            options |= {arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)}
    return options


@pytest.mark.parametrize("script", [script for _, script in run_all.BENCHMARKS])
def test_every_benchmark_run_all_calls_takes_quick_and_output(script):
    path = BENCHMARKS / script
    if not path.exists():
        pytest.skip(f"{script} is not in this checkout yet")
    assert {"--quick", "--output"} <= option_strings(path), f"{script} lacks --quick or --output"


def test_run_all_covers_every_benchmark_folder_but_the_model_rebuild():
    listed = {script for _, script in run_all.BENCHMARKS}
    on_disk = {path.relative_to(BENCHMARKS).as_posix() for path in BENCHMARKS.glob("*/run.py")}
    assert on_disk <= listed | set(run_all.GPU_ONLY) and "default_model/build.py" not in listed


def test_run_all_records_each_run_and_stops_at_the_first_failure(tmp_path, monkeypatch, capsys):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    writes = "import json, sys; out = sys.argv[sys.argv.index('--output') + 1]\n"
    (scripts / "good.py").write_text(writes + "json.dump({'mode': 'quick' if '--quick' in sys.argv else 'full'}, "
                                     "open(out, 'w'))\n")
    (scripts / "bad.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(run_all, "BENCHMARKS_DIR", scripts)
    monkeypatch.setattr(run_all, "BENCHMARKS", (("good", "good.py"), ("bad", "bad.py"), ("never", "good.py")))
    results = tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--results", str(results)])
    with pytest.raises(SystemExit, match="benchmark 'bad' failed with exit status 3"):
        run_all.main()
    record = json.loads((results / "run_all.json").read_text())
    assert [(e["name"], e["mode"], e["exit_status"]) for e in record["benchmarks"]] == [("good", "quick", 0),
                                                                                         ("bad", "quick", 3)]
    assert json.loads((results / "good.json").read_text()) == {"mode": "quick"}
    assert "good.py --quick --output" in record["benchmarks"][0]["command"] and not (results / "never.json").exists()

    # --only reruns one benchmark and keeps the others' entries; a successful run renders the tables.
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--results", str(results), "--only", "good"])
    run_all.main()
    assert [e["name"] for e in json.loads((results / "run_all.json").read_text())["benchmarks"]] == ["good", "bad"]
    assert "## performance" in (results / "tables.md").read_text()


def test_the_bpe_workload_gives_different_questions_different_contexts(tmp_path):
    """Renumbering by first appearance alone made every repeat-free context of one length the same ids (0, 1, …)."""
    sys.path.insert(0, str(BENCHMARKS / "loglikelihood"))
    from run import subword_encoder

    rows = [{"instruction": f"{word} stone river cloud maple", "answer": "yes"} for word in ("amber", "cobalt")]
    (tmp_path / "rows.json").write_text(json.dumps(rows * 20))
    encode = subword_encoder(tmp_path)
    first, second = (encode({"context": row["instruction"], "choices": ["yes", "no"]}) for row in rows)
    assert len(first[0][0]) == len(second[0][0]) and first[0][0] != second[0][0]
    for requests in (first, second):  # a token shared by the context and an option keeps one id
        assert all(0 <= token < 256 for context, option in requests for token in (*context, *option))


def test_the_estimator_difference_interval_resamples_questions():
    sys.path.insert(0, str(BENCHMARKS / "loglikelihood"))
    from estimator import difference

    even = difference([0] * 40)  # no question differs: no interval either
    assert even["agreements"] == 0 and even["ci95"] == [0, 0]
    one_sided = difference([1] * 10 + [0] * 30)  # adaptive right where ref128 was wrong on 10 of 40 questions
    low, high = one_sided["ci95"]
    assert one_sided["agreements"] == 10 and 0 < low < 10 < high <= 20
    mixed = difference([3, -3] * 20)
    assert mixed["agreements"] == 0 and mixed["ci95"][0] < 0 < mixed["ci95"][1]


def test_the_sampler_preset_block_shows_both_presets_and_the_paired_difference():
    data = {"presets": {"exact": {"exact_match": 35.94, "stderr": 4.26, "eval_seconds": 5.77, "settings": {}},
                        "fast": {"exact_match": 34.38, "stderr": 4.2, "eval_seconds": 0.34,
                                 "settings": {"threshold": 0.9, "cache": "dual"}}},
            "speedup_fast_vs_exact": 16.97, "paired": {"documents": 128, "only_fast_right": 1, "only_exact_right": 3,
                                                       "difference_points": -1.56, "ci95_points": [-4.6, 1.5]},
            "adapter": "a", "task": "lastdigit", "clock": "c", "command": "python benchmarks/sampler/preset.py"}
    block = report.render_sampler_preset({"sampler_preset": data})
    assert "| `exact` | one step per token | 35.94 ± 4.26 | 5.77 s |" in block
    assert "| `fast` | threshold 0.9, cache dual | 34.38 ± 4.20 | 0.34 s |" in block
    assert "17.0× faster" in block and "−1.56 points, 95 % interval −4.60 to +1.50" in block.replace("-", "−")
    assert "No `sampler_preset.json` yet" in report.render_sampler_preset({})
