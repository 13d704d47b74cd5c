"""`benchmarks/miniature/`: the paired statistics, the task readers, and one tiny end-to-end run of the benchmark."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks" / "miniature"


def load(name):
    spec = importlib.util.spec_from_file_location(f"miniature_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # run.py puts its own folder on sys.path, for its `design` and `tasks` imports
    return module


design, tasks, run = load("design"), load("tasks"), load("run")
sys.path.insert(0, str(FOLDER.parent))
import report  # noqa: E402  (benchmarks/report.py)


def test_paired_difference_is_a_t_interval_over_the_per_seed_differences():
    difference = design.paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])  # differences 2, 3, 4: mean 3, sd 1
    assert difference["n"] == 3 and difference["mean"] == 3.0 and difference["std"] == 1.0
    # t_{0.975, 2} = 4.3027: half-width 4.3027 / √3 = 2.4841
    assert difference["low"] == pytest.approx(0.5159, abs=1e-4) and difference["high"] == pytest.approx(5.4841, abs=1e-4)
    assert difference["contains_zero"] is False and difference["decided"] is True
    assert "beats LoRA" in design.verdict("X", difference, "points")
    assert "trails LoRA" in design.verdict("X", difference, "nats", higher_is_better=False)  # a higher loss is worse
    noisy = design.paired_difference([1.0, 9.0], [4.0, 4.0])
    assert noisy["contains_zero"] is True and "no difference detectable" in design.verdict("X", noisy, "points")
    flat = design.paired_difference([2.0, 2.0], [1.0, 1.0])  # a point interval [1, 1]: excludes 0, yet no evidence
    assert flat["contains_zero"] is False and flat["decided"] is False and "no claim" in design.verdict("X", flat, "points")
    single = design.paired_difference([1.0], [0.0])
    assert single["low"] is None and "no interval" in design.verdict("X", single, "points")


def test_detectable_difference_shrinks_with_seeds_and_seeds_needed_inverts_it():
    # n = 5: (t_{0.975,4} + t_{0.8,4}) / √5 = (2.7764 + 0.9410) / 2.2361 = 1.6625 standard deviations
    assert design.detectable_difference(1.0, 5) == pytest.approx(1.6625, abs=1e-3)
    assert design.detectable_difference(1.0, 10) < design.detectable_difference(1.0, 5)
    assert design.detectable_difference(1.0, 1) is None
    needed = design.seeds_needed(4.0, 2.0)
    assert design.detectable_difference(4.0, needed) <= 2.0 < design.detectable_difference(4.0, needed - 1)


def test_steps_to_fraction_finds_where_the_smoothed_loss_made_90_percent_of_its_drop():
    losses = [10.0] * 20 + [10.0 - step for step in range(1, 10)] + [1.0] * 40  # drop of 9 over steps 21–29
    # the window mean reaches 10 − 0.9·9 = 1.9 once the window holds enough of the ones
    step = design.steps_to_fraction(losses, window=20)
    window = losses[step - 20 : step]
    assert sum(window) / 20 <= 1.9 < sum(losses[step - 21 : step - 1]) / 20
    assert design.steps_to_fraction([1.0] * 30) is None  # no drop


def test_sst2_and_agnews_are_read_from_their_tsv_files_with_candidates(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "agnews").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood film \t1\nbad film \t0\n")
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\n" + "a " * 50 + "long one\t1\n")
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    (tmp_path / "agnews" / "train-subset.tsv").write_text("".join(f"text {i}\t{labels[i % 4]}\n" for i in range(8)))
    (tmp_path / "agnews" / "test.tsv").write_text("".join(f"news {i}\t{labels[i % 4]}\n" for i in range(40)))
    sst2 = tasks.load_task("sst2", tmp_path, 10, None)
    assert sorted(record["response"] for record in sst2["train"]) == [" negative", " positive"]
    (item,) = sst2["test"]
    assert item["gold"] == " positive" and item["candidates"] == [" negative", " positive"]
    assert len(item["prompt"]) <= len("Review: \nSentiment:") + tasks.TEXT_CHARS  # cut at a word boundary
    agnews = tasks.load_task("agnews", tmp_path, 8, 8)
    assert len(agnews["train"]) == 8 and [item["gold"] for item in agnews["test"]].count(" Sports") == 2
    assert tasks.cut("one two three", 9) == "one two"
    lastdigit = tasks.load_task("lastdigit", tmp_path, 4, 3)
    assert all(item["gold"] in item["candidates"] and len(item["candidates"]) == 10 for item in lastdigit["test"])


def test_a_tiny_run_pairs_seeds_compares_with_lora_and_renders(tmp_path):
    settings = {"seeds": (0, 1), "steps": {"lastdigit": 2}, "train_count": 40, "test_count": 3, "loss_count": 3,
                "generate": 2, "mc_num": 1, "sst2_whole_split": False}
    comparisons = {"nara": {"title": "tiny", "tasks": ("lastdigit",), "arms": (run.LORA, run.NARA_ARMS[1])}}
    record = run.run(settings, comparisons, tmp_path, tmp_path / "runs", on_line=lambda line: None)
    result = record["tasks"]["lastdigit"]
    lora, nara = result["arms"]
    # the paper-like hypernetwork: 64 → 4 → r² = 580 parameters over LoRA's, 1.8 % of LoRA's at rank 8
    assert nara["trainable_parameters"] - lora["trainable_parameters"] == 580
    assert lora["trainable_parameters"] == 32768 and nara["storage_bytes"] > lora["storage_bytes"]
    difference = nara["accuracy"]["vs_lora"]
    assert difference["n"] == 2 and set(difference) >= {"mean", "low", "high", "contains_zero", "verdict"}
    assert "vs_lora" not in lora["accuracy"] and set(nara["loss_by_level"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    # paired: within a seed both arms start as the base model and see the same batch and masks, so their first
    # training losses agree; different seeds draw different batches
    runs = {arm: [json.loads((tmp_path / "runs" / "lastdigit" / arm / f"seed{s}" / "run.json").read_text())
                  for s in (0, 1)] for arm in ("lora", "nara")}
    assert runs["lora"][0]["losses"][0] == pytest.approx(runs["nara"][0]["losses"][0], abs=1e-6)
    assert runs["lora"][0]["losses"][0] != runs["lora"][1]["losses"][0]
    assert result["power"]["n"] == 2 and result["against_paper"] is None

    results = tmp_path / "results"
    results.mkdir()
    run.plot_figure1(record["tasks"], results / run.FIGURE_PLOT)
    run.plot_loss_curves(record["tasks"], results / run.LOSS_PLOT)
    (results / "miniature.json").write_text(json.dumps({**record, "mode": "quick", "plots": [run.FIGURE_PLOT]}))
    block = report.render_blocks(results, results)["miniature"]
    assert "### tiny" in block and "| LoRA | 32,768 |" in block and "(reference)" in block
    assert f"![{Path(run.FIGURE_PLOT).stem}]({run.FIGURE_PLOT})" in block and "Power on `lastdigit`: n = 2" in block
