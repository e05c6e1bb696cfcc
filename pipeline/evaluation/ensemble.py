"""Fold model folders, the post-processing chosen out of fold, and the ensemble against one fold alone.

``dvc repro`` trains each fold of ``cv.folds`` into ``<train.out_dir>/fold_<k>/`` (:func:`pipeline.config.for_fold`);
the test-set evaluation predicts with the ensemble of those folds and, beside it, the first fold alone:
:func:`ensemble_vs_single` is :func:`pipeline.evaluation.compare.compare` between the two (paired bootstrap CI of
the difference, Wilcoxon p), per class and for the per-case mean over classes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config, EvaluateConfig, fold_name, for_fold
from pipeline.evaluation.compare import TABLE_COLUMNS, compare
from pipeline.inference.model_folder import META, POSTPROCESSING

CV_DIR = "cv"  # <metrics_dir>/cv: the pooled out-of-fold table and its summary
OOF_DIR = "oof"  # <metrics_dir>/oof/fold_<k>: one fold's out-of-fold tables
ENSEMBLE_FILE = "ensemble_vs_single.csv"
MEAN_CLASS = "mean over classes"
#: the columns of ``ensemble_vs_single.csv``: the comparison's, and which folds were the single model and the ensemble
ENSEMBLE_COLUMNS = (*TABLE_COLUMNS, "single", "ensemble")


def fold_model_dirs(cfg: Config) -> list[tuple[int | str, Path]]:
    """``(fold, model folder)`` of every fold in ``cv.folds`` (``<train.out_dir>/fold_<k>``).

    A ``train.out_dir`` that is itself a model folder (stages run by hand without ``--fold``), or that holds none
    of these fold folders, is the one fold ``sample.fold``.
    """
    if _single(cfg):
        return [(cfg.sample.fold, Path(cfg.train.out_dir))]
    return [(k, Path(for_fold(cfg, k).train.out_dir)) for k in cfg.cv.folds]


def _single(cfg: Config) -> bool:
    """``train.out_dir`` is one model folder (or holds no fold folder at all), not a folder of folds."""
    out = Path(cfg.train.out_dir)
    return (out / META).is_file() or not any((out / fold_name(k)).is_dir() for k in cfg.cv.folds)


def fold_config(cfg: Config, fold: int | str) -> Config:
    """The config fold ``fold`` was trained with (the config itself when ``train.out_dir`` is a model folder)."""
    return cfg if _single(cfg) else for_fold(cfg, fold)


def chosen_postprocessing(cfg: Config) -> list[int] | None:
    """The classes the pool stage chose to keep the largest component of, or None if it has not run."""
    path = Path(cfg.train.out_dir) / POSTPROCESSING
    return json.loads(path.read_text())["keep_largest_component"] if path.is_file() else None


def read_cv_summary(metrics_dir: str | Path) -> dict | None:
    """``<metrics_dir>/cv/summary.json`` if the pool stage wrote one with out-of-fold cases (fold ``all`` has none)."""
    path = Path(metrics_dir) / CV_DIR / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else None
    return summary if summary and summary.get("n_cases") else None


def case_means(per_case: pd.DataFrame) -> pd.DataFrame:
    """One row per case, class ``mean over classes``: its Dice averaged over the classes."""
    keep = [c for c in ("case_id", "group", "fold") if c in per_case.columns]
    means = per_case.groupby(keep, sort=False, dropna=False)["dice"].mean().reset_index()
    return means.assign(class_name=MEAN_CLASS)


def ensemble_vs_single(
    ensemble: pd.DataFrame, single: pd.DataFrame, e: EvaluateConfig, folds: Sequence[Any], single_fold: Any
) -> pd.DataFrame:
    """Paired comparison B - A with B the ensemble and A the single fold: Dice per class and per-case mean."""
    a = pd.concat([single, case_means(single)], ignore_index=True)
    b = pd.concat([ensemble, case_means(ensemble)], ignore_index=True)
    table, _ = compare(a, b, metrics=("dice",), n_bootstrap=e.n_bootstrap, seed=e.seed)
    return table.assign(single=fold_name(single_fold), ensemble="+".join(fold_name(f) for f in folds))


def ensemble_summary(table: pd.DataFrame, folds: Sequence[Any], single_fold: Any) -> dict[str, Any]:
    """The ensemble-vs-single row of the per-case mean over classes, for ``summary.json``."""
    row = table[table["class_name"] == MEAN_CLASS].iloc[0]
    return {
        "folds": [fold_name(f) for f in folds],
        "single": fold_name(single_fold),
        "mean_dice_single": float(row["mean_a"]),
        "mean_dice_ensemble": float(row["mean_b"]),
        "mean_diff": float(row["mean_diff"]),
        "ci95_low": _plain(row["ci95_low"]),
        "ci95_high": _plain(row["ci95_high"]),
        "wilcoxon_p": _plain(row["wilcoxon_p"]),
        "n_pairs": int(row["n_pairs"]),
    }


def _plain(x: Any) -> float | None:
    return float(x) if pd.notna(x) else None
