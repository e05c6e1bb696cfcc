"""The report's citable parts: a generated methods-and-results paragraph, the cross-validation table and the
ensemble-vs-single-fold row.

Every number is read from what the pipeline wrote (``splits.json``, ``dvc.lock``, each fold's ``model.json``
with its plan, ``metrics/summary.json``, ``metrics/cv/summary.json``, ``ensemble_vs_single.csv``), never
recomputed here, so the paragraph says exactly what the files say.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.evaluation.ensemble import ENSEMBLE_FILE, MEAN_CLASS, read_cv_summary
from pipeline.evaluation.lineage import dvc_lock_hashes
from pipeline.evaluation.metrics import SUMMARY_KEYS
from pipeline.evaluation.report import _e, _fmt, _table
from pipeline.inference.model_folder import META

logger = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        logger.info("%s not found: the methods paragraph leaves it out", path)
        return {}
    return json.loads(path.read_text())


def _ci(stats: Mapping[str, Any]) -> str:
    return f"{_fmt(stats.get('mean'))} (95% CI {_fmt(stats.get('ci95_low'))}-{_fmt(stats.get('ci95_high'))})"


def _data(splits: Mapping[str, Any], hashes: Mapping[str, str], data_root: str, pre_dir: str) -> str:
    folds = splits.get("folds", [])
    n = len(splits.get("test", [])) + sum(len(f) for f in folds)
    raw = hashes.get(f"dvc.dep.{data_root}") or hashes.get(f"dvc.out.{data_root}")
    pre = hashes.get(f"dvc.out.{pre_dir}")
    source = f"DVC md5 {raw}" if raw else "not in a dvc.lock"
    text = f"Data: {n} labelled cases from {data_root} ({source}; per-case SHA-256 of every image and label in"
    text += " per_case.csv)"
    text += f", preprocessed into {pre_dir} (DVC md5 {pre})." if pre else "."
    groups = splits.get("groups")
    grouping = (
        f"cases of one group (patient or site; {len(set(groups.values()))} named groups) kept together"
        if groups
        else "split case by case (no groups)"
    )
    n_test = len(splits.get("test", []))
    held_out = (
        f"The dataset's own {n_test} labelled test cases were the test set"
        if splits.get("test_given")
        else f"{n_test} cases were held out for testing (split.test_fraction {splits.get('test_fraction')}, "
        f"seed {splits.get('seed')})"
    )
    return (
        f"{text} {held_out} and the other {n - n_test} "
        f"split into {len(folds)} cross-validation folds of {'/'.join(str(len(f)) for f in folds)} cases, "
        f"{grouping}, before anything was planned."
    )


def _plan(meta: Mapping[str, Any]) -> str:
    plan = meta.get("plan") or {}
    spacing = " x ".join(_fmt(s, 2) for s in plan.get("target_spacing", []))
    text = (
        f"Preprocessing (the plan in model.json, planned from the non-test cases): resampled to {spacing} mm, "
        f"{plan.get('normalization')} intensity normalisation"
        f"{', cropped to the body' if plan.get('crop_foreground') else ''}."
    )
    settings = meta.get("settings") or plan.get("settings") or {}
    if settings:
        chosen = "; ".join(
            f"{k} {json.dumps(v.get('value'))} ({v.get('source')})"
            for k, v in settings.items()
            if k not in ("strides", "kernel_sizes")
        )
        text += f" Training settings (model.json; planned from the data unless overridden): {chosen}."
    return text


def _training(metas: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    if not metas:
        return ""
    first = metas[0][1]
    train = (first.get("config") or {}).get("train", {})
    loss = train.get("loss", {})
    text = (
        f"Network: {first.get('model', {}).get('name')} ({_fmt(first.get('parameters'))} parameters), "
        f"{first.get('spatial_dims')}D, Dice + cross-entropy loss (background in Dice: "
        f"{_fmt(loss.get('dice_include_background'))}, batch Dice: {_fmt(loss.get('batch_dice'))}), "
        f"{train.get('optimizer')} with learning rate {train.get('lr')}."
    )
    runs = []
    for name, meta in metas:
        t = meta.get("training") or {}
        run = f"{name} {t.get('epochs_run')} of {t.get('epochs_planned')} planned epochs"
        run += f" in {_fmt(t.get('minutes'), 1)} min" if t.get("minutes") is not None else ""
        if t.get("stopped_by_max_minutes"):
            run += " (stopped by the wall clock, train.max_minutes: not reproducible)"
        runs.append(run + f", kept epoch {meta.get('epoch')}")
    return f"{text} Training length: {'; '.join(runs)}."


def _evaluation(summary: Mapping[str, Any], nsd_mm: float) -> str:
    policy, boot = summary.get("empty_policy") or {}, summary.get("bootstrap") or {}
    empty = (
        f" Empty masks: Dice, IoU and NSD are {_fmt(policy.get('both_empty'))} when reference and prediction are "
        f"both empty, {_fmt(policy.get('ref_empty_only'))} when only the reference is and "
        f"{_fmt(policy.get('pred_empty_only'))} when only the prediction is ('–': reported missing); distances "
        "are missing when either is empty."
        if policy
        else ""
    )
    return (
        "Metrics: Dice, IoU, HD95, ASSD and normalised surface Dice (tolerance "
        f"{_fmt(nsd_mm, 2)} mm) per case and foreground class, on each scan's own voxel grid.{empty} 95% CIs: "
        f"percentile bootstrap of the mean, {_fmt(boot.get('n'))} resamples (seed {_fmt(boot.get('seed'))}), "
        "resampling cases (whole groups when cases have one)."
    )


def _results(summary: Mapping[str, Any], cv: Mapping[str, Any] | None) -> str:
    parts = []
    if cv:
        spread = cv.get("fold_spread", {})
        parts.append(
            f"Cross-validation, out of fold ({len(cv.get('folds', {}))} folds, "
            f"{_fmt(cv.get('n_cases'))} of {_fmt(cv.get('n_non_test_cases'))} non-test cases): per-case mean Dice "
            f"{_ci(cv.get(MEAN_CLASS, {}).get('dice', {}))}; fold means {_fmt(spread.get('min'))}-"
            f"{_fmt(spread.get('max'))}."
        )
        post = cv.get("postprocessing", {})
        kept = [n for n, d in post.get("classes", {}).items() if d.get("apply")]
        parts.append(
            f"Keeping the largest connected component was applied to {', '.join(kept) if kept else 'no class'} "
            f"(rule: {post.get('rule', 'not recorded')})."
        )
    classes = [
        f"{name} {_ci(stats['dice'])}"
        for name, stats in summary.items()
        if name not in SUMMARY_KEYS and isinstance(stats, Mapping) and "dice" in stats
    ]
    parts.append(
        f"Test set ({_fmt(summary.get('n_cases'))} cases): mean Dice {_fmt(summary.get('mean_dice'))}; "
        f"{'; '.join(classes)}."
    )
    ens = summary.get("ensemble")
    if ens:
        parts.append(
            f"The ensemble of {len(ens.get('folds', []))} folds (probabilities averaged) scored per-case mean Dice "
            f"{_fmt(ens.get('mean_dice_ensemble'))} against {_fmt(ens.get('mean_dice_single'))} for "
            f"{ens.get('single')} alone: difference {_fmt(ens.get('mean_diff'))} (paired bootstrap 95% CI "
            f"{_fmt(ens.get('ci95_low'))} to {_fmt(ens.get('ci95_high'))}, Wilcoxon p "
            f"{p_value(ens.get('wilcoxon_p'))}, {_fmt(ens.get('n_pairs'))} cases)."
        )
    return " ".join(parts)


def methods_paragraphs(cfg: Config, model_dirs: Sequence[Path], lock_path: str | Path = "dvc.lock") -> list[str]:
    """``[methods, results]`` as plain text, every number read from the files the stages wrote."""
    metrics_dir = Path(cfg.evaluate.metrics_dir)
    metas = [(Path(d).name, _read_json(Path(d) / META)) for d in model_dirs]
    metas = [(name, meta) for name, meta in metas if meta]
    methods = [
        _data(_read_json(Path(cfg.split.file)), dvc_lock_hashes(lock_path), cfg.data.root, cfg.preprocess.out_dir),
        _plan(metas[0][1] if metas else {}),
        _training(metas),
        _evaluation(_read_json(metrics_dir / "summary.json"), cfg.evaluate.nsd_tolerance_mm),
    ]
    results = _results(_read_json(metrics_dir / "summary.json"), read_cv_summary(metrics_dir))
    return [" ".join(p for p in methods if p), results]


def cv_section(cv: Mapping[str, Any]) -> str:
    """HTML: the out-of-fold table (each fold and the pooled row) and the post-processing decisions."""
    rows = [[name, f.get("n_cases"), f.get("mean_dice")] for name, f in cv.get("folds", {}).items()]
    rows.append(["pooled out-of-fold", cv.get("n_cases"), cv.get("mean_dice")])
    pooled = cv.get(MEAN_CLASS, {}).get("dice", {})
    spread = cv.get("fold_spread", {})
    parts = [
        "<h2>Cross-validation (out-of-fold)</h2>",
        f"<p>Each fold model scored on its own validation cases: {_fmt(cv.get('n_cases'))} of "
        f"{_fmt(cv.get('n_non_test_cases'))} non-test cases. Per-case mean Dice {_e(_ci(pooled))}"
        f"{', resampling groups' if cv.get('grouped_bootstrap') else ''}; fold means {_fmt(spread.get('min'))}-"
        f"{_fmt(spread.get('max'))} (std {_fmt(spread.get('std'))}).</p>",
        _table(["fold", "cases", "mean Dice"], rows),
    ]
    post = cv.get("postprocessing", {}).get("classes", {})
    if post:
        rows = [
            [name, d.get("mean_gain"), f"[{_fmt(d.get('ci95_low'))}, {_fmt(d.get('ci95_high'))}]", d.get("apply")]
            for name, d in post.items()
        ]
        parts += [
            "<p class='note'>Keep-largest-component per class, chosen on these out-of-fold predictions: "
            f"{_e(cv['postprocessing'].get('rule', ''))}.</p>",
            _table(["class", "Dice gain", "95% CI", "applied"], rows),
        ]
    return "\n".join(parts)


def p_value(p: Any) -> str:
    """``= 0.012`` or ``< 0.001`` (three decimals would print a small p as 0.000)."""
    if isinstance(p, (int, float)) and math.isfinite(p) and p < 0.001:
        return "< 0.001"
    return f"= {_fmt(p)}"


def ensemble_section(table: pd.DataFrame) -> str:
    """HTML: the ensemble against its first fold alone on the test set, per class and per-case mean."""
    rows = [
        [r.class_name, r.n_pairs, r.mean_a, r.mean_b, r.mean_diff, f"[{_fmt(r.ci95_low)}, {_fmt(r.ci95_high)}]",
         p_value(r.wilcoxon_p).removeprefix("= ")]
        for r in table.itertuples()
    ]  # fmt: skip
    first = table.iloc[0]
    return "\n".join(
        [
            "<h2>Ensemble vs single fold (test set)</h2>",
            f"<p>{_e(first['ensemble'])} (probabilities averaged) against {_e(first['single'])} alone, case by case:"
            " Dice difference ensemble - single with its paired bootstrap 95% CI and the Wilcoxon signed-rank p.</p>",
            _table(["class", "pairs", "single", "ensemble", "difference", "95% CI", "Wilcoxon p"], rows),
        ]
    )


def results_sections(cfg: Config, model_dirs: Sequence[Path], lock_path: str | Path = "dvc.lock") -> list[str]:
    """The report's methods-and-results paragraphs, cross-validation table and ensemble row (what exists)."""
    methods, results = methods_paragraphs(cfg, model_dirs, lock_path)
    parts = [
        "<h2>Methods and results</h2>",
        '<p class="note">Generated from the files this run wrote; every number is read from them.</p>',
        f"<p>{_e(methods)}</p>",
        f"<p>{_e(results)}</p>",
    ]
    cv = read_cv_summary(cfg.evaluate.metrics_dir)
    if cv:
        parts.append(cv_section(cv))
    path = Path(cfg.evaluate.metrics_dir) / ENSEMBLE_FILE
    table = pd.read_csv(path) if path.is_file() and path.stat().st_size else None
    if table is not None and not table.empty:  # only its header without an ensemble
        parts.append(ensemble_section(table))
    return ["\n".join(parts)]
