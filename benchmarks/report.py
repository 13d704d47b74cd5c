"""Render the benchmark tables from `benchmarks/results/*.json` into the READMEs: no figure in them is hand-typed.

    python benchmarks/report.py                        # rewrites the blocks in docs/benchmarks.md, docs/methods.md, benchmarks/*README.md
    python benchmarks/report.py --results benchmarks/results/quick --tables benchmarks/results/quick/tables.md

A block is the text between `<!-- benchmarks:NAME -->` and `<!-- /benchmarks:NAME -->`; everything outside the
markers is left as it is, and a file without a block's markers is not touched for that block. Blocks:

* `performance`: each speed or memory ratio of the sampler, training-throughput, log-likelihood, backbone-loading and
  multi-process benchmarks, with its goal and whether the figure meets it;
* `miniature`: both papers' method comparisons of `benchmarks/miniature/` (per task: every method's mean, its paired
  difference to LoRA with a 95 % interval, trainable share, adapter file size, steps to 90 % of the loss drop), the
  design's power, the LoRA-Diffusion paper check, the differences whose interval excludes 0, and the plots;
* `timings`: the wall time of each benchmark in the last `run_all.py` run, quick and full;
* `loglikelihood`: every workload × `mc_num` of `benchmarks/loglikelihood/` (speed-up and token ratio);
* `loglikelihood_estimator`: `--mc-estimator adaptive` against the reference at mc_num 128 (agreement with the judge,
  tokens, requests/s per task and suite) and the stopping settings it was chosen from;
* `trajectory_router`: LoRA-Diffusion's router composing two task adapters (router weights, test losses);
* `sampler`: the sampler's rows of `performance`, for `benchmarks/sampler/README.md`.
* `sampler_preset`: `eval --sampler-preset fast` against the exact sampler on the default task (accuracy with the
  paired difference and its interval, eval time).

The performance table shows the log-likelihood's whole-suite rows (`suite_of`) when the results have them.

The JSON schemas grow as the benchmarks do, so every figure is read defensively: a missing one is shown as "—".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
READMES = (
    ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "methods.md",
    *(ROOT / "benchmarks" / name for name in ("README.md", "loglikelihood/README.md", "sampler/README.md")),
)
MISSING = "—"


def dig(data, *keys):
    """`data[k1][k2]…`, or None when any step is missing or of the wrong kind."""
    for key in keys:
        if (isinstance(data, dict) and key in data) or (
            isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data)
        ):
            data = data[key]
        else:
            return None
    return data


def number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_results(directory: Path) -> dict[str, dict]:
    """Every `<name>.json` in `directory`, by name; a file that is not valid JSON counts as missing."""
    results = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return results


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    value = number(value)
    return MISSING if value is None else f"{value:{spec}}{suffix}"


def verdict(value, goal: str) -> str:
    """'met' / '**not met**' for a figure against a goal written as '≥ x' or '≤ x'; '—' without a figure."""
    value = number(value)
    if value is None:
        return MISSING
    relation, threshold = goal.split()
    met = value >= float(threshold) if relation == "≥" else value <= float(threshold)
    return "met" if met else "**not met**"


def source_note(results: dict[str, dict], names: list[str]) -> str:
    """Which file each figure came from, in which mode and how long it ran."""
    parts = []
    for name in names:
        data = results.get(name)
        if data is None:
            parts.append(f"`{name}.json` missing")
            continue
        mode = data.get("mode") or "mode not recorded"
        seconds = number(data.get("wall_seconds"))
        parts.append(f"`{name}.json` ({mode}" + (f", {seconds:.0f} s)" if seconds is not None else ")"))
    return "Sources: " + "; ".join(parts) + "."


def performance_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(item, figure, goal, met) for every ratio of the performance table."""
    return sampler_rows(results) + other_rows(results)


def sampler_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """The sampler benchmark's rows: speed against the reference loop, fast decoding, NaRA's cost, accuracy."""
    sampler = results.get("sampler", {})
    rows = []
    for key, label in (("reference", "one block"), ("reference_blockwise", "4 blocks of 16")):
        ratio = dig(sampler, key, "ratio_ours_vs_reference")
        tokens = dig(sampler, key, "tokens_per_second")
        detail = ""
        if number(dig(tokens, "ours")) is not None and number(dig(tokens, "reference")) is not None:
            detail = f" ({tokens['ours']:.0f} vs {tokens['reference']:.0f} tokens/s)"
        rows.append((f"`sample()` vs the reference loop, tokens/s (gen 64, steps 64, {label})",
                     fmt(ratio, ".3f") + detail, "≥ 1.0", verdict(ratio, "≥ 1.0")))
    variants = dig(sampler, "fast", "variants") or {}
    threshold = "threshold" + (f" {fmt(dig(sampler, 'fast', 'threshold'), 'g')}" if dig(sampler, "fast") else "")
    for name, label, goal in (
        ("threshold+dual", f"{threshold} + dual KV cache", "≥ 4"),
        ("threshold+prefix", f"{threshold} + prefix KV cache", None),
        ("threshold", f"{threshold} alone", None),
    ):
        speedup = dig(variants, name, "speedup_vs_reference")
        equal = dig(variants, name, "answers_equal_to_reference")
        detail = f" (answers equal to the reference's: {equal})" if equal else ""
        rows.append((f"{label} vs the reference loop (4 blocks of 16), speed-up", fmt(speedup, ".1f", "×") + detail,
                     goal or MISSING, verdict(speedup, goal) if goal else MISSING))
    for entry in dig(sampler, "nara_vs_lora") or [{}]:
        ratio = dig(entry, "ratio_nara_vs_lora")
        model = str(dig(entry, "model") or MISSING).split(" {")[0]
        parameters = number(dig(entry, "parameters"))
        size = f", {parameters / 1e6:.1f} M parameters" if parameters is not None else ""
        floor = number(dig(entry, "ratio_lora_copy_vs_lora"))
        cold = number(dig(entry, "ratio_nara_cold_vs_lora"))
        identical = dig(entry, "nara_canvases_identical_to_unfolded")
        notes = ([f"LoRA vs an identical LoRA: {floor:.3f}"] if floor is not None else []) + (
            [f"cores recomputed every call: {cold:.3f}"] if cold is not None else []) + (
            [f"canvases {'identical' if identical else 'NOT identical'} to NaRA without the fold"]
            if isinstance(identical, bool) else [])
        detail = f" ({'; '.join(notes)})" if notes else ""
        met = verdict(ratio, "≤ 1.03") if identical is not False else "**not met** (canvases differ)"
        rows.append((f"NaRA / LoRA sampling time, rank 32 ({model}{size})", fmt(ratio, ".3f") + detail, "≤ 1.03",
                     met))
    accuracy = dig(sampler, "accuracy") or {}
    scores = dig(accuracy, "exact_match") or {}
    default = number(dig(scores, "default", "exact_match"))
    for name, goal in (("threshold+dual", "≤ 1"), ("threshold+prefix", "≤ 1"), ("threshold", None)):
        drop = dig(scores, name, "drop_points")
        detail = ""
        if default is not None and number(dig(scores, name, "exact_match")) is not None:
            detail = (f" ({default:.1f} % → {scores[name]['exact_match']:.1f} % on `{dig(accuracy, 'task')}`, "
                      f"{dig(scores, name, 'documents')} prompts, evaluation "
                      f"{fmt(dig(scores, name, 'speedup_vs_default'), '.1f', '×')} faster)")
        rows.append((f"accuracy drop of {name.replace('+', ' + ')} vs the default sampler, points",
                     fmt(drop, ".1f") + detail, goal or MISSING, verdict(drop, goal) if goal else MISSING))
    return rows


def other_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """Training throughput, log-likelihood, backbone loading and multi-process equivalence."""
    rows = []
    ratios = dig(results, "train_throughput", "ratios") or {}
    for key, label, goal in (
        ("nara_over_lora_step_time", "NaRA / LoRA training step time (CPU time, rank 32)", "≤ 1.05"),
        ("ours_over_peft_lora_tokens_per_second", "our LoRA / PEFT's LoRA, training tokens/s", "≥ 1.0"),
        ("ours_over_peft_lora_peak_rss", "our LoRA / PEFT's LoRA, peak RSS of training", "≤ 1.0"),
    ):
        rows.append((label, fmt(ratios.get(key), ".3f"), goal, verdict(ratios.get(key), goal)))

    by_workload: dict[str, list[dict]] = {}
    entries = [entry for entry in dig(results, "loglikelihood", "results") or [] if isinstance(entry, dict)]
    suites = [entry for entry in entries if entry.get("suite_of")]  # whole-suite rows, when the run has them
    for entry in suites or entries:
        by_workload.setdefault(str(entry.get("workload", MISSING)), []).append(entry)
    for workload, entries in by_workload.items() or [(MISSING, [])]:
        figures = ", ".join(f"{fmt(e.get('speedup'), '.2f', '×')} at mc_num {e.get('mc_num', MISSING)}" for e in entries)
        met_at = [str(e.get("mc_num")) for e in entries if verdict(e.get("speedup"), "≥ 3") == "met"]
        met = MISSING if not entries else ("met at mc_num " + ", ".join(met_at) if met_at else "**not met**")
        rows.append((f"batched log-likelihood vs one request at a time: {workload}", figures or MISSING, "≥ 3", met))

    loads = [load for load in dig(results, "backbone_loading", "loads") or [] if isinstance(load, dict)]
    for entry in [load for load in loads if load.get("how") == "load_backbone"] or [{}]:
        naive = [load for load in loads if load.get("how") == "naive" and load.get("dtype") == entry.get("dtype")]
        ratio = entry.get("anonymous_over_model_size")
        detail = f" (naive load: {fmt(naive[0].get('anonymous_over_model_size'))})" if naive else ""
        rows.append((f"`load_backbone` memory growth / parameter size ({entry.get('dtype', MISSING)})",
                     fmt(ratio) + detail, "≤ 1.0", verdict(ratio, "≤ 1.0")))

    equivalence = results.get("multiprocess_equivalence", {})
    losses = [number(equivalence.get(key)) for key in
              ("train_loss_max_relative_difference", "validation_loss_max_relative_difference")]
    loss_gap = max(losses) if None not in losses else None
    adapter_gap = number(equivalence.get("adapter_max_relative_difference"))
    rows.append(("2 processes × grad-accum 2 vs 1 × 4: largest relative loss difference", fmt(loss_gap, ".1e"),
                 f"≤ {fmt(equivalence.get('loss_tolerance'), 'g')}",
                 verdict(loss_gap, f"≤ {equivalence['loss_tolerance']}") if "loss_tolerance" in equivalence else MISSING))
    rows.append(("same, largest adapter difference / the tensor's largest entry", fmt(adapter_gap, ".1e"),
                 f"≤ {fmt(equivalence.get('adapter_tolerance'), 'g')}",
                 verdict(adapter_gap, f"≤ {equivalence['adapter_tolerance']}")
                 if "adapter_tolerance" in equivalence else MISSING))
    return rows


def render_sampler(results: dict[str, dict]) -> str:
    """The sampler's rows of the performance table, for `benchmarks/sampler/README.md`."""
    lines = ["| item | figure | goal | goal met |", "|---|---|---|---|"]
    lines += [f"| {item} | {figure} | {goal} | {met} |" for item, figure, goal, met in sampler_rows(results)]
    return "\n".join(lines) + "\n\n" + source_note(results, ["sampler"])


def render_sampler_preset(results: dict[str, dict]) -> str:
    """`eval --sampler-preset fast` against `exact` on the default task: accuracy, the paired difference, eval time."""
    data = results.get("sampler_preset")
    if not isinstance(data, dict):
        return "No `sampler_preset.json` yet: run `nice python benchmarks/sampler/preset.py`."
    lines = ["| preset | sampler settings | exact match, % (± s.e.) | eval CPU time |", "|---|---|---|---|"]
    for preset, row in (data.get("presets") or {}).items():
        settings = ", ".join(f"{key} {value}" for key, value in (row.get("settings") or {}).items()) or "one step per token"
        lines.append(f"| `{preset}` | {settings} | {fmt(row.get('exact_match'), '.2f')} ± {fmt(row.get('stderr'), '.2f')} "
                     f"| {fmt(row.get('eval_seconds'), '.2f', ' s')} |")
    paired = data.get("paired") or {}
    low, high = (paired.get("ci95_points") or [None, None])[:2]
    return "\n".join(lines) + (
        f"\n\n`fast` evaluates {fmt(data.get('speedup_fast_vs_exact'), '.1f', '×')} faster than `exact`; accuracy "
        f"difference (fast − exact) {fmt(paired.get('difference_points'), '+.2f')} points, 95 % interval "
        f"{fmt(low, '+.2f')} to {fmt(high, '+.2f')} (paired over {fmt(paired.get('documents'), '.0f')} prompts: only "
        f"`fast` right on {fmt(paired.get('only_fast_right'), '.0f')}, only `exact` on "
        f"{fmt(paired.get('only_exact_right'), '.0f')}). Adapter: {data.get('adapter', MISSING)}; task "
        f"`{data.get('task', MISSING)}`; {data.get('clock', MISSING)}. (`{data.get('command', MISSING)}`)")


def render_performance(results: dict[str, dict]) -> str:
    lines = ["| item | figure | goal | goal met |", "|---|---|---|---|"]
    lines += [f"| {item} | {figure} | {goal} | {met} |" for item, figure, goal, met in performance_rows(results)]
    names = ["sampler", "train_throughput", "loglikelihood", "backbone_loading", "multiprocess_equivalence"]
    return "\n".join(lines) + "\n\n" + source_note(results, names)


def mean_std(entry, spec: str = ".1f") -> str:
    mean, std = number(dig(entry, "mean")), number(dig(entry, "std"))
    if mean is None:
        return MISSING
    return f"{mean:{spec}} ± {std:{spec}}" if std is not None else f"{mean:{spec}}"


def interval(difference, spec: str = "+.1f") -> str:
    """'+2.0 [−1.0, +5.0]' for a paired difference with its 95 % interval; bold where the interval excludes 0."""
    mean, low, high = (number(dig(difference, key)) for key in ("mean", "low", "high"))
    if mean is None:
        return MISSING
    if low is None or high is None:
        return f"{mean:{spec}} (n = {dig(difference, 'n')}, no interval)"
    text = f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"
    return f"**{text}**" if dig(difference, "decided") else text


def miniature_table(result: dict) -> list[str]:
    """One task of the miniature comparison: every arm's means and paired differences to LoRA, and the base row."""
    header = ["method", "trainable", "share of the model", "adapter file", "accuracy (log-lik.), %",
              "Δ accuracy vs LoRA [95 % CI]", "held-out loss", "Δ loss vs LoRA [95 % CI]", "exact match, %",
              "steps to 90 % of the loss drop"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in result.get("arms") or []:
        steps = [step for step in entry.get("steps_to_90") or [] if number(step) is not None]
        storage = number(entry.get("storage_bytes"))
        cells = [str(entry.get("label", MISSING)), fmt(entry.get("trainable_parameters"), ",.0f"),
                 fmt(100 * number(entry["trainable_share"]) if number(entry.get("trainable_share")) is not None
                     else None, ".2f", " %"),
                 MISSING if storage is None else f"{storage / 1024:,.0f} KiB",
                 mean_std(dig(entry, "accuracy")), interval(dig(entry, "accuracy", "vs_lora")) if
                 dig(entry, "accuracy", "vs_lora") else "(reference)",
                 mean_std(dig(entry, "mean_loss"), ".3f"),
                 interval(dig(entry, "mean_loss", "vs_lora"), "+.3f") if dig(entry, "mean_loss", "vs_lora")
                 else "(reference)",
                 mean_std(dig(entry, "exact_match")),
                 f"{sum(steps) / len(steps):.0f}" if steps else MISSING]
        lines.append("| " + " | ".join(cells) + " |")
    base = result.get("base") or {}
    lines.append(f"| base model (no adapter) | 0 | 0 % | | {fmt(base.get('accuracy'), '.1f')} | | "
                 f"{fmt(base.get('mean_loss'), '.3f')} | | {fmt(base.get('exact_match'), '.1f')} | |")
    return lines


def render_miniature(results: dict[str, dict], results_dir: Path, relative_to: Path) -> str:
    """Both comparisons of `benchmarks/miniature/`: one table per task, the power of the design, the paper check,
    the differences whose interval excludes 0, and the plots."""
    data = results.get("miniature")
    if data is None:
        return "No `miniature.json` yet: run `python benchmarks/run_all.py --only miniature`."
    if not isinstance(data.get("tasks"), dict):
        return "`miniature.json` is of an older format: run `python benchmarks/run_all.py --only miniature`."
    settings = data.get("settings") or {}
    seeds = settings.get("seeds") or []
    parts = [
        f"Model `{data.get('model', MISSING)}` ({fmt(data.get('base_parameters'), ',.0f')} parameters); seeds "
        f"{', '.join(map(str, seeds)) or MISSING}, paired (the same data order and masks for every method); "
        f"low-rank arms at rank {data.get('rank', MISSING)}. Accuracy: the gold answer has the highest "
        f"log-likelihood among the candidates (mc_num {settings.get('mc_num', MISSING)}, masks fixed by the tokens). "
        f"Held-out loss: mean over λ ∈ {{{', '.join(map(str, settings.get('levels') or []))}}} of the masked-diffusion "
        f"loss on fixed masks, {settings.get('loss_count', MISSING)} test items. Exact match: default sampler, first "
        f"{settings.get('generate', MISSING)} test items. Mean ± std over seeds; Δ = method − LoRA per seed, mean "
        f"and 95 % t-interval; **bold** where the interval excludes 0 (and has a width: a point interval, every seed "
        f"giving the same difference, is no evidence). {source_note(results, ['miniature'])}"
    ]
    decided = []
    for name, comparison in (data.get("comparisons") or {}).items():
        parts.append(f"### {comparison.get('title', name)}")
        for task in comparison.get("tasks") or []:
            result = data["tasks"].get(task)
            if not isinstance(result, dict):
                continue
            parts.append(f"`{task}`: {result.get('steps', MISSING)} training steps, {result.get('train_examples', MISSING)} "
                         f"training examples, {result.get('test_items', MISSING)} test items.\n\n"
                         + "\n".join(miniature_table(result)))
            power = result.get("power") or {}
            parts.append(
                f"Power on `{task}`: n = {power.get('n', MISSING)} seeds, median spread of the paired accuracy "
                f"differences {fmt(power.get('median_std'), '.1f')} points, so the smallest difference this design "
                f"detects (α = 0.05, power 0.8) is {fmt(power.get('detectable_points'), '.1f')} points; "
                f"{power.get('seeds_for_2_points') or MISSING} seeds would detect 2 points.")
            paper = result.get("against_paper")
            if isinstance(paper, dict):
                parts.append(
                    f"Against the LoRA-Diffusion paper on `{task}`: LoRA-Diffusion reaches "
                    f"{fmt(100 * paper['accuracy_ratio'] if number(paper.get('accuracy_ratio')) is not None else None, '.1f')} % "
                    f"of full fine-tuning's accuracy ({fmt(100 * paper['gain_ratio'] if number(paper.get('gain_ratio')) is not None else None, '.0f')} % "
                    f"of its gain over the base model) at "
                    f"{fmt(100 * paper['trainable_share'] if number(paper.get('trainable_share')) is not None else None, '.1f')} % "
                    "trainable; the paper claims 98.6 % at 0.7 % (Table 5).")
            for entry in result.get("arms") or []:
                for metric in ("accuracy", "mean_loss"):
                    difference = dig(entry, metric, "vs_lora")
                    if isinstance(difference, dict) and difference.get("decided") is True:
                        decided.append(f"- `{task}`: {difference.get('verdict')}"
                                       + (" (held-out loss)" if metric == "mean_loss" else " (accuracy)"))
    parts.append("Differences to LoRA whose 95 % interval excludes 0 (every other one is not distinguishable from "
                 "0 at this n):\n\n" + ("\n".join(decided) or "- none"))
    images = []
    for name in [Path(str(plot)).name for plot in data.get("plots") or []]:
        target = Path(results_dir) / name
        if target.exists():
            images.append(f"![{target.stem}]({Path(os.path.relpath(target, relative_to)).as_posix()})")
        else:
            images.append(f"(plot `{name}` missing)")
    return "\n\n".join(parts) + "\n\n" + "\n".join(images)


def render_timings(results_dir: Path) -> str:
    """Seconds per benchmark in the last full and quick `run_all.py` runs (`run_all.json` in the results directory
    and in its `quick/`), told apart by the mode each records."""
    runs: dict[str, dict] = {"quick": {}, "full": {}}
    for path in (Path(results_dir) / "run_all.json", Path(results_dir) / "quick" / "run_all.json"):
        try:
            record = json.loads(path.read_text())
            entries = {entry["name"]: entry for entry in record.get("benchmarks", [])}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue
        if record.get("mode") in runs and not runs[record["mode"]]:
            runs[record["mode"]] = entries
    names = list(dict.fromkeys([*runs["full"], *runs["quick"]]))
    if not names:
        return "No `run_all.json` yet: run `python benchmarks/run_all.py`."
    lines = ["| benchmark | quick run, s | full run, s |", "|---|---|---|"]
    for name in names:
        cells = []
        for mode in ("quick", "full"):
            entry = runs[mode].get(name, {})
            seconds = fmt(entry.get("seconds"), ".0f")
            status = entry.get("exit_status")
            cells.append(seconds if status in (0, None) else f"{seconds} (failed, exit {status})")
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    totals = [
        f"{sum(number(entry.get('seconds')) or 0 for entry in runs[mode].values()):.0f}" if runs[mode] else MISSING
        for mode in ("quick", "full")
    ]
    lines.append(f"| total | {totals[0]} | {totals[1]} |")
    return "\n".join(lines)


def render_loglikelihood(results: dict[str, dict]) -> str:
    """The log-likelihood benchmark's own table (every workload × mc_num), as its run wrote it, and where from."""
    data = results.get("loglikelihood")
    if not isinstance(data, dict) or not isinstance(data.get("table"), str):
        return "No `loglikelihood.json` yet: run `python benchmarks/run_all.py --only loglikelihood`."
    differences = [number(entry.get("max_abs_difference")) for entry in data.get("results") or []
                   if isinstance(entry, dict)]
    differences = [value for value in differences if value is not None]
    bpe = data.get("bpe_tokenizer") or {}
    notes = [f"`{data.get('command', MISSING)}`, mode {data.get('mode', MISSING)}, "
             f"{fmt(data.get('wall_seconds'), '.0f')} s"]
    if differences:
        notes.append(f"the two arms' estimates differ by at most {max(differences):.1e} nats")
    if number(bpe.get("vocabulary")) is not None:
        trained = fmt(bpe.get("training_seconds"), ".0f")
        notes.append(f"BPE vocabulary {bpe['vocabulary']:,} tokens, trained in {trained} s")
    return data["table"] + "\n\n(" + "; ".join(notes) + ".)"


def estimator_rows(data: dict) -> list[str]:
    """One row per task and suite of `loglikelihood/estimator.py`: agreement with the judge, tokens and speed."""
    rows = [(name, row) for name, row in (data.get("tasks") or {}).items()]
    rows += [(f"**{name}**", data[name]) for name in ("suite (BPE tokens)", "suite (byte tokens)", "suite (both)")
             if isinstance(data.get(name), dict)]
    lines = ["| task | questions × seeds (exact judge) | agree: ref128 / adaptive | adaptive − ref128 (95 % CI) | "
             "with ref1024: ref128 / adaptive | fewer tokens | requests/s × | samples per option |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows:
        if not isinstance(row, dict):
            continue
        agree = f"{fmt(dig(row, 'ref128', 'agree'), '.0f')} / {fmt(dig(row, 'adaptive', 'agree'), '.0f')}"
        ref1024 = (f"{fmt(dig(row, 'ref128', 'agree_with_ref1024'), '.0f')} / "
                   f"{fmt(dig(row, 'adaptive', 'agree_with_ref1024'), '.0f')}")
        lines.append(f"| {name} | {fmt(row.get('questions_x_seeds'), '.0f')} "
                     f"({fmt(row.get('questions_judged_exactly'), '.0f')}) | {agree} | {gain(row)} | {ref1024} | "
                     f"{fmt(row.get('token_ratio'), '.2f', '×')} | {fmt(row.get('speedup'), '.2f', '×')} | "
                     f"{fmt(dig(row, 'adaptive', 'mean_samples_per_request'), '.1f')} |")
    return lines


def gain(row: dict) -> str:
    """adaptive − ref128 agreements and its 95 % interval, e.g. "+2 (−3 to +7)"."""
    value, interval = number(dig(row, "difference", "agreements")), dig(row, "difference", "ci95")
    if value is None or not isinstance(interval, list) or len(interval) != 2:
        return MISSING
    signed = lambda x: f"{x:+.0f}".replace("-", "−") if x else "0"  # noqa: E731
    return f"{signed(value)} ({signed(interval[0])} to {signed(interval[1])})"


def render_loglikelihood_estimator(results: dict[str, dict]) -> str:
    """The adaptive estimator against ref128 (report run), and the stopping settings it was chosen from (tuning run)."""
    data = results.get("loglikelihood_estimator")
    if not isinstance(data, dict):
        return ("No `loglikelihood_estimator.json` yet: run `nice python benchmarks/loglikelihood/estimator.py`.")
    settings = data.get("settings") or {}
    text = "\n".join(estimator_rows(data))
    suite = data.get("suite (both)") or {}
    goal = (number(dig(suite, "adaptive", "agree")) or 0) >= (number(dig(suite, "ref128", "agree")) or 1) and \
        (number(suite.get("token_ratio")) or 0) >= 4 and (number(suite.get("speedup")) or 0) >= 4
    text += (f"\n\nGoal (suite, both): adaptive agrees at least as often as ref128, with ≥ 4× fewer tokens and ≥ 4× "
             f"the requests/s: **{'met' if goal else 'not met'}**; adaptive − ref128 agreements: {gain(suite)} "
             f"(95 % interval, a bootstrap over questions). Adaptive settings: stop_se "
             f"{settings.get('stop_se', MISSING)}, futility_se {settings.get('futility_se', MISSING)}, mc_num "
             f"{settings.get('mc_num', MISSING)}; judge: {settings.get('judge', MISSING)}; ref1024 lies "
             f"{fmt(suite.get('ref1024_rms_nats_from_exact'), '.2f')} nats (RMS) from the exact value on the "
             f"{fmt(suite.get('ref1024_compared_to_exact'), '.0f')} multi-token answers judged exactly. "
             f"(`{data.get('command', MISSING)}`, {fmt(data.get('seconds'), '.0f')} s.)")
    tuning = results.get("loglikelihood_estimator_tuning")
    sweep = dig(tuning, "suite (both)", "sweep") if isinstance(tuning, dict) else None
    if isinstance(sweep, dict) and sweep:
        suite = tuning["suite (both)"]
        text += ("\n\nThe stopping settings, on other questions (`" + str(tuning.get("command", MISSING)) + "`; "
                 f"ref128 agrees on {fmt(dig(suite, 'ref128', 'agree'), '.0f')} of "
                 f"{fmt(suite.get('questions_x_seeds'), '.0f')}):\n\n"
                 "| stop_se, futility_se | agree | with ref1024 | fewer tokens than ref128 |\n|---|---|---|---|\n")
        text += "\n".join(f"| {name.replace('stop_se ', '').replace(' futility_se ', ', ')} | "
                           f"{fmt(row.get('agree'), '.0f')} | {fmt(row.get('agree_with_ref1024'), '.0f')} | "
                           f"{fmt(row.get('token_ratio'), '.2f', '×')} |" for name, row in sweep.items())
    return text


def render_trajectory_router(results: dict[str, dict]) -> str:
    """Per model and task: the router's weight on the task's own adapter while sampling, and the test losses."""
    runs = dig(results, "trajectory_router", "runs")
    if not isinstance(runs, dict) or not runs:
        return "No `trajectory_router.json` yet: run `python benchmarks/run_all.py --only trajectory_router`."
    lines = ["| model | task | router weight on the task's adapter (all steps) | prompts routed to their task | "
             "test loss: base / the task's adapter / composition |", "|---|---|---|---|---|"]
    for model, run in runs.items():
        weights, losses = dig(run, "router_weights_while_sampling") or {}, dig(run, "test_loss_at_fixed_levels") or {}
        for task in weights:
            share = number(dig(weights, task, "share_of_prompts_routed_to_own_task"))
            loss = " / ".join(fmt(dig(losses, name, task), ".3f") for name in ("base", f"{task} adapter", "composition"))
            lines.append(f"| `{model}` | `{task}` | {fmt(dig(weights, task, 'all_steps', task), '.4f')} | "
                         f"{MISSING if share is None else f'{share:.0%}'} | {loss} |")
    return "\n".join(lines) + "\n\n" + source_note(results, ["trajectory_router"])


def render_blocks(results_dir: Path, relative_to: Path) -> dict[str, str]:
    """Every block's Markdown, with image links relative to the directory of the file they go into."""
    results = load_results(results_dir)
    return {
        "performance": render_performance(results),
        "miniature": render_miniature(results, results_dir, relative_to),
        "timings": render_timings(results_dir),
        "loglikelihood": render_loglikelihood(results),
        "loglikelihood_estimator": render_loglikelihood_estimator(results),
        "trajectory_router": render_trajectory_router(results),
        "sampler": render_sampler(results),
        "sampler_preset": render_sampler_preset(results),
    }


def replace_blocks(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with the content between each block's markers replaced; returns it and the names of blocks replaced."""
    replaced = []
    for name, content in blocks.items():
        pattern = re.compile(rf"(<!-- benchmarks:{re.escape(name)} -->\n).*?(<!-- /benchmarks:{re.escape(name)} -->)",
                             re.DOTALL)
        body = content.rstrip("\n")
        text, count = pattern.subn(lambda match, body=body: f"{match.group(1)}{body}\n{match.group(2)}", text)
        if count:
            replaced.append(name)
    return text, replaced


def update_file(path: Path, results_dir: Path) -> list[str]:
    """Rewrite the blocks of one Markdown file in place; returns the names of the blocks it has."""
    text = path.read_text()
    new_text, replaced = replace_blocks(text, render_blocks(results_dir, path.resolve().parent))
    if new_text != text:
        atomic_write_bytes(path, new_text.encode())
    return replaced


def write_tables(path: Path, results_dir: Path) -> None:
    """All blocks, one after the other, into a file of their own (what a quick run renders)."""
    blocks = render_blocks(results_dir, Path(path).resolve().parent)
    shown = Path(os.path.relpath(Path(results_dir).resolve(), ROOT)).as_posix()
    text = f"# Benchmark tables rendered by `benchmarks/report.py` from `{shown}`\n"
    text += "".join(f"\n## {name}\n\n{content}\n" for name, content in blocks.items())
    atomic_write_bytes(Path(path), text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the benchmark JSON files")
    parser.add_argument("--readme", type=Path, nargs="*", default=list(READMES), help="Markdown files to update")
    parser.add_argument("--tables", type=Path, help="instead: write every block into this one file")
    args = parser.parse_args()
    if not args.results.is_dir():
        raise SystemExit(f"report: no results directory {args.results}; run benchmarks/run_all.py first.")
    if args.tables:
        write_tables(args.tables, args.results)
        print(f"wrote {args.tables}")
        return
    for path in args.readme:
        print(f"{path}: {', '.join(update_file(path, args.results)) or 'no benchmark markers'}")


if __name__ == "__main__":
    main()
