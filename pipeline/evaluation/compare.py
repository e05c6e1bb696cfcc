"""Compare two evaluations case by case: paired differences, bootstrap CI of the mean difference, Wilcoxon test.

Each side is one of

* a metrics folder holding ``per_case.csv`` (e.g. the ``metrics/`` of a DVC experiment), or the CSV itself;
* ``mlflow:<run_id>`` or ``runs:/<run_id>``: the per-case table logged by ``pipeline.evaluation.evaluator`` on that
  run, read from the tracking store (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
  ``sqlite:///mlflow.db``);
* ``dvc:<rev>``: ``metrics/per_case.csv`` as committed at a git revision or DVC experiment name.

Rows are paired by ``(case_id, class_name)``; differences are B - A. Usage::

    python -m pipeline.tools.compare metrics/ mlflow:1a2b3c --out compare.csv
"""

from __future__ import annotations

import io as _io
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.evaluation.metrics import summarize

logger = logging.getLogger(__name__)

__all__ = ["compare", "load_per_case", "paired_differences"]

KEYS = ("case_id", "class_name")
DEFAULT_METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "hd95_mm", "assd_mm")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CSV_ARTIFACT = "evaluation/per_case.csv"
TABLE_ARTIFACT = "evaluation/per_case_table.json"
DVC_PATH = "metrics/per_case.csv"


class CompareError(ValueError):
    """An input that cannot be read or compared; the message names it."""


def _run_id(source: str) -> str | None:
    for prefix in ("mlflow:", "runs:/"):
        if source.startswith(prefix):
            return source[len(prefix) :].strip("/").split("/")[0]
    return None


def _from_mlflow(run_id: str, tracking_uri: str | None) -> pd.DataFrame:
    """The per-case table of an MLflow run: its CSV artifact, else its ``log_table`` JSON."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.evaluation.tracking import redact_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise CompareError(f"mlflow:{run_id}: no such run in {redact_uri(uri)} ({err})") from None
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in (CSV_ARTIFACT, TABLE_ARTIFACT):
            try:
                local = Path(client.download_artifacts(run_id, artifact, tmp))
            except (MlflowException, OSError):
                continue
            if artifact.endswith(".csv"):
                return pd.read_csv(local)
            table = json.loads(local.read_text())
            return pd.DataFrame(table["data"], columns=table["columns"])
    raise CompareError(f"mlflow:{run_id}: run has neither {CSV_ARTIFACT} nor {TABLE_ARTIFACT} in {redact_uri(uri)}")


def _from_dvc(rev: str, repo: str | None = None) -> pd.DataFrame:
    import dvc.api

    try:
        text = dvc.api.read(DVC_PATH, repo=repo, rev=rev)
    except Exception as err:  # dvc raises many unrelated types for a missing rev or file
        raise CompareError(f"dvc:{rev}: cannot read {DVC_PATH} ({type(err).__name__}: {err})") from None
    return pd.read_csv(_io.StringIO(text))


def load_per_case(source: str | Path, tracking_uri: str | None = None) -> pd.DataFrame:
    """The per-case table behind ``source`` (metrics folder, CSV, ``mlflow:<id>``, ``runs:/<id>``, ``dvc:<rev>``)."""
    text = str(source)
    run_id = _run_id(text)
    if run_id:
        frame = _from_mlflow(run_id, tracking_uri)
    elif text.startswith("dvc:"):
        frame = _from_dvc(text[len("dvc:") :])
    else:
        path = Path(text)
        if path.is_dir():
            path = path / "per_case.csv"
        if not path.is_file():
            raise CompareError(f"{source}: no per_case.csv found (give a metrics folder, a CSV or mlflow:<run_id>)")
        frame = pd.read_csv(path)
    missing = [k for k in KEYS if k not in frame.columns]
    if missing:
        raise CompareError(f"{source}: per-case table lacks column(s) {missing}")
    frame = frame.assign(case_id=frame["case_id"].astype(str), class_name=frame["class_name"].astype(str))
    if frame.duplicated(list(KEYS)).any():
        raise CompareError(f"{source}: (case_id, class_name) is not unique")
    return frame


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """Rows present in both tables, with ``<m>_a``, ``<m>_b`` and ``<m>_diff`` (= B - A) per metric."""
    metrics = [m for m in metrics if m in a.columns and m in b.columns]
    if not metrics:
        raise CompareError("the two tables share none of the metrics to compare")
    left = a[[*KEYS, *metrics]].rename(columns={m: f"{m}_a" for m in metrics})
    right = b[[*KEYS, *metrics]].rename(columns={m: f"{m}_b" for m in metrics})
    pairs = left.merge(right, on=list(KEYS), how="inner", validate="one_to_one")
    n_only_a, n_only_b = len(left) - len(pairs), len(right) - len(pairs)
    if n_only_a or n_only_b:
        logger.warning("unpaired rows left out: %d only in A, %d only in B", n_only_a, n_only_b)
    if pairs.empty:
        raise CompareError("no (case_id, class_name) pairs in common")
    for m in metrics:
        pairs[f"{m}_diff"] = pd.to_numeric(pairs[f"{m}_b"], errors="coerce") - pd.to_numeric(
            pairs[f"{m}_a"], errors="coerce"
        )
    return pairs.sort_values(list(KEYS), kind="mergesort").reset_index(drop=True)


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (NaNs dropped).

    NaN with no pairs; 1.0 when every difference is zero (no evidence of a difference).
    """
    d = diff[~np.isnan(diff)]
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d).pvalue)


#: the columns of :func:`compare`'s table, one row per class and metric
TABLE_COLUMNS = (
    "class_name", "metric", "n_pairs", "mean_a", "mean_b", "mean_diff", "ci95_low", "ci95_high", "wilcoxon_p",
    "n_bootstrap", "seed",
)  # fmt: skip


def compare(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class and metric: pairs, means of A and B, mean difference B - A with its bootstrap 95% CI
    (seeded, as :func:`pipeline.evaluation.metrics.summarize`) and the Wilcoxon signed-rank p-value.

    Returns ``(table, pairs)``; ``pairs`` is :func:`paired_differences`.
    """
    pairs = paired_differences(a, b, metrics)
    metrics = [m for m in metrics if f"{m}_diff" in pairs.columns]
    diffs = pairs[["class_name"]].assign(**{m: pairs[f"{m}_diff"] for m in metrics})
    boot = summarize(diffs, metrics=metrics, n_bootstrap=n_bootstrap, seed=seed)
    rows = []
    for cls, group in pairs.groupby("class_name", sort=False):
        for m in metrics:
            s = boot[str(cls)][m]
            valid = group[f"{m}_diff"].notna()  # pairs with the metric on both sides
            rows.append(
                {
                    "class_name": cls,
                    "metric": m,
                    "n_pairs": s["n"],
                    "mean_a": pd.to_numeric(group.loc[valid, f"{m}_a"]).mean(),
                    "mean_b": pd.to_numeric(group.loc[valid, f"{m}_b"]).mean(),
                    "mean_diff": s["mean"],
                    "ci95_low": s["ci95_low"],
                    "ci95_high": s["ci95_high"],
                    "wilcoxon_p": wilcoxon_p(group[f"{m}_diff"].to_numpy(np.float64)),
                }
            )
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS[:-2])).assign(n_bootstrap=n_bootstrap, seed=seed)
    return table, pairs


def format_table(table: pd.DataFrame) -> str:
    """The comparison as aligned text for the terminal."""
    shown = table[["class_name", "metric", "n_pairs", "mean_a", "mean_b", "mean_diff"]].copy()
    shown["95% CI (B - A)"] = [
        "n/a" if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.4f}, {hi:+.4f}]"
        for lo, hi in zip(table["ci95_low"], table["ci95_high"], strict=True)
    ]
    shown["wilcoxon_p"] = ["n/a" if pd.isna(p) else f"{p:.3g}" for p in table["wilcoxon_p"]]
    return shown.to_string(
        index=False,
        formatters={
            "mean_a": lambda v: "n/a" if pd.isna(v) else f"{v:.4f}",
            "mean_b": lambda v: "n/a" if pd.isna(v) else f"{v:.4f}",
            "mean_diff": lambda v: "n/a" if pd.isna(v) else f"{v:+.4f}",
        },
    )
