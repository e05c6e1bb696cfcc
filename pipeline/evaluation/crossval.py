"""Cross-validation: each fold model on its own validation cases, pooled into one out-of-fold table.

:func:`fold_tables` (stage ``crossval@k``) has fold k's model predict its validation cases, from their raw scans
and scored as the test set is, into ``<metrics_dir>/oof/fold_<k>/per_case.csv`` (and ``per_case_largest.csv``:
the same predictions with the largest component per class kept). :func:`out_of_fold` (stage ``pool``) pools
them into ``<metrics_dir>/cv/per_case.csv`` (a ``fold`` column; every non-test case once when every fold is
trained) and ``cv/summary.json``: bootstrap CIs over cases (over groups when cases have one), each fold's mean
Dice and their spread; and chooses keep-largest-component per class on these predictions
(:func:`choose_postprocessing`), recorded with its CIs in ``<train.out_dir>/postprocessing.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, EvaluateConfig, fold_name
from pipeline.core import io
from pipeline.core.dataset import read_configured
from pipeline.core.splits import read_splits
from pipeline.evaluation.compare import compare
from pipeline.evaluation.ensemble import CV_DIR, MEAN_CLASS, OOF_DIR, case_means, fold_model_dirs
from pipeline.evaluation.evaluator import empty_policy, label_values, predict_cases, score_case
from pipeline.evaluation.metrics import summarize
from pipeline.inference.model_folder import POSTPROCESSING
from pipeline.inference.postprocess import keep_largest_component
from pipeline.inference.predictor import Predictor

logger = logging.getLogger(__name__)

RAW, LARGEST = "per_case.csv", "per_case_largest.csv"
MAX_P = 0.05  # post-processing: the Wilcoxon p its out-of-fold gain must stay under


def oof_dir(cfg: Config, fold: int | str) -> Path:
    """Where fold ``k``'s out-of-fold tables go (``<evaluate.metrics_dir>/oof/fold_<k>``)."""
    return Path(cfg.evaluate.metrics_dir) / OOF_DIR / fold_name(fold)


def fold_tables(cfg: Config, fold: int | str, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold ``fold``'s model (``folder``) on its own validation cases: the rows as predicted, and with the
    largest component per class kept; written to ``<metrics_dir>/oof/fold_<k>/``."""
    info = read_configured(cfg.data)
    by_id = {c.case_id: c for c in info.cases}
    cases = [by_id[c] for c in read_splits(cfg.split.file)["folds"][int(fold)]]
    predictor = Predictor(folder, keep_largest=False)
    labels = {int(k): v for k, v in predictor.meta["labels"].items()}
    values = label_values(predictor.meta)
    grouped = any(c.group for c in cases)
    raw: list[dict] = []
    largest: list[dict] = []
    for case, pred, _, seconds in predict_cases(cases, predictor, desc=f"out of fold, {fold_name(fold)}"):
        extra = {"fold": fold, **({"group": case.group or ""} if grouped else {}), "predict_seconds": seconds}
        raw += score_case(case, pred, labels, values, cfg.evaluate, extra)[0]
        kept = keep_largest_component(pred.copy(), [k for k in labels if k])
        largest += score_case(case, kept, labels, values, cfg.evaluate, extra)[0]
    out = oof_dir(cfg, fold)
    io.write_csv(out / RAW, pd.DataFrame(raw))
    io.write_csv(out / LARGEST, pd.DataFrame(largest))
    return pd.DataFrame(raw), pd.DataFrame(largest)


def _pooled_tables(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Out-of-fold rows of every fold of ``cv.folds`` (as its ``crossval@k`` stage wrote them); None when no
    fold has validation cases (``cv.folds: [all]``)."""
    raw, largest = [], []
    for fold, folder in fold_model_dirs(cfg):
        if fold == "all":
            logger.info("fold 'all' has no validation cases: not in the out-of-fold table")
            continue
        out = oof_dir(cfg, fold)
        if (out / RAW).is_file() and (out / LARGEST).is_file():
            tables = pd.read_csv(out / RAW), pd.read_csv(out / LARGEST)
        else:
            tables = fold_tables(cfg, fold, folder)
        raw.append(tables[0])
        largest.append(tables[1])
    if not raw:
        return None
    return pd.concat(raw, ignore_index=True), pd.concat(largest, ignore_index=True)


def choose_postprocessing(raw: pd.DataFrame, largest: pd.DataFrame, e: EvaluateConfig) -> dict[str, Any]:
    """Keep-largest-component per class, applied only where the paired bootstrap 95% CI of its out-of-fold
    Dice gain lies above zero and the Wilcoxon signed-rank p is below 0.05 (nnU-Net decides on the mean gain;
    the CI guards against noise, the test against a CI from a handful of cases: it needs 6 or more)."""
    table, _ = compare(raw, largest, metrics=("dice",), n_bootstrap=e.n_bootstrap, seed=e.seed)
    index = raw.drop_duplicates("class_name").set_index("class_name")["class_index"].to_dict()
    decisions = {}
    for row in table.itertuples():
        decisions[str(row.class_name)] = {
            "class_index": int(index[row.class_name]),
            "apply": bool(pd.notna(row.ci95_low) and row.ci95_low > 0 and row.wilcoxon_p < MAX_P),
            "mean_dice_raw": _plain(row.mean_a),
            "mean_dice_largest": _plain(row.mean_b),
            "mean_gain": _plain(row.mean_diff),
            "ci95_low": _plain(row.ci95_low),
            "ci95_high": _plain(row.ci95_high),
            "wilcoxon_p": _plain(row.wilcoxon_p),
            "n_pairs": int(row.n_pairs),
        }
    return {
        "keep_largest_component": sorted(d["class_index"] for d in decisions.values() if d["apply"]),
        "rule": "keep the largest component of a class where the paired bootstrap 95% CI of the out-of-fold "
        f"Dice gain excludes zero (gain > 0) and the Wilcoxon signed-rank p < {MAX_P}",
        "classes": decisions,
        "n_bootstrap": int(e.n_bootstrap),
        "seed": int(e.seed),
    }


def _plain(x: Any) -> float | None:
    return float(x) if pd.notna(x) else None


def _fold_spread(per_case: pd.DataFrame) -> tuple[dict[str, dict], dict[str, float | None]]:
    """Each fold's case count and mean Dice (mean over classes of the class means), and their spread."""
    folds = {}
    for fold, rows in per_case.groupby("fold", sort=True):
        mean = float(rows.groupby("class_name")["dice"].mean().mean())
        folds[fold_name(fold)] = {"n_cases": int(rows["case_id"].nunique()), "mean_dice": mean}
    dice = np.array([f["mean_dice"] for f in folds.values()], dtype=float)
    spread = {
        "mean": float(dice.mean()),
        "std": float(dice.std(ddof=1)) if dice.size > 1 else None,
        "min": float(dice.min()),
        "max": float(dice.max()),
    }
    return folds, spread


def out_of_fold(cfg: Config) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pool the folds' out-of-fold tables; write and return the pooled table and its summary, and write the
    keep-largest-component choice into ``<train.out_dir>/postprocessing.json`` (read by prediction)."""
    e = cfg.evaluate
    pooled = _pooled_tables(cfg)
    splits = read_splits(cfg.split.file)
    if pooled is None:
        return _nothing_out_of_fold(cfg, sum(len(f) for f in splits["folds"]))
    per_case, largest = pooled
    summary = summarize(per_case, n_bootstrap=e.n_bootstrap, seed=e.seed, policy=empty_policy(e))
    means = summarize(case_means(per_case), metrics=("dice",), n_bootstrap=e.n_bootstrap, seed=e.seed)
    folds, spread = _fold_spread(per_case)
    postprocessing = choose_postprocessing(per_case, largest, e)
    postprocessing["folds"] = [fold_name(k) for k in cfg.cv.folds]  # the folder's ensemble (older folds are stale)
    summary.update(
        {
            MEAN_CLASS: means[MEAN_CLASS],
            "n_cases": int(per_case["case_id"].nunique()),
            "n_non_test_cases": sum(len(f) for f in splits["folds"]),
            "complete": sorted(per_case["fold"].astype(str).unique()) == sorted(map(str, range(len(splits["folds"])))),
            "folds": folds,
            "fold_spread": spread,
            "grouped_bootstrap": "group" in per_case.columns,
            "postprocessing": postprocessing,
        }
    )
    _write_pool_outputs(cfg, per_case, summary, postprocessing)
    logger.info(
        "out-of-fold mean Dice %.4f over %d cases (%d of %d folds); largest component kept for classes %s",
        summary["mean_dice"],
        summary["n_cases"],
        len(folds),
        len(splits["folds"]),
        postprocessing["keep_largest_component"] or "none",
    )
    return per_case, summary


def _nothing_out_of_fold(cfg: Config, n_non_test: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pool stage's outputs when no fold of ``cv.folds`` has validation cases (fold ``all`` trained on every
    non-test case): an empty table, a summary saying so, and no post-processing (nothing to choose it on)."""
    why = "no fold of cv.folds has validation cases (fold 'all' trains on every non-test case)"
    postprocessing = {
        "keep_largest_component": [],
        "rule": f"none chosen: {why}",
        "classes": {},
        "folds": [fold_name(k) for k in cfg.cv.folds],
    }
    summary = {"n_cases": 0, "n_non_test_cases": n_non_test, "complete": False, "folds": {}, "note": why}
    summary["postprocessing"] = postprocessing
    per_case = pd.DataFrame(columns=["case_id", "class_name", "dice", "fold"])
    _write_pool_outputs(cfg, per_case, summary, postprocessing)
    logger.info("no out-of-fold cases: %s; no post-processing chosen", why)
    return per_case, summary


def _write_pool_outputs(cfg: Config, per_case: pd.DataFrame, summary: dict, postprocessing: dict) -> None:
    """The pool stage's outputs: ``cv/per_case.csv``, ``cv/summary.json`` and the model folder's choice."""
    out = Path(cfg.evaluate.metrics_dir) / CV_DIR
    io.write_csv(out / "per_case.csv", per_case)
    io.write_json(out / "summary.json", summary)
    io.write_json(Path(cfg.train.out_dir) / POSTPROCESSING, postprocessing)
