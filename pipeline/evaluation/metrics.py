"""Per-case segmentation metrics and their summary statistics.

Definitions (all per foreground class, binary masks ``P`` = prediction, ``R`` = reference):

* ``dice`` = 2|P∩R| / (|P|+|R|), ``iou`` = |P∩R| / |P∪R|, computed from exact voxel counts.
* Surfaces are the mask voxels removed by one binary erosion (MONAI ``get_mask_edges``).
  Distances between surface voxels are Euclidean in mm (voxel spacing respected, MONAI
  ``get_surface_distance``) and aggregated as MONAI's ``compute_hausdorff_distance``
  (``percentile=95``: the larger of the two directed 95th percentiles),
  ``compute_average_surface_distance`` (``symmetric=True``: mean over the pooled distances of
  both directions) and ``compute_surface_dice`` (normalised surface dice, Nikolov et al. 2021,
  voxel surfaces, a boundary point counts if its distance is <= tolerance) do; the tests
  check equality with those functions.
* Empty masks: overlap scores follow an :class:`EmptyPolicy`; distances are always missing (NaN).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from monai.metrics.utils import get_mask_edges, get_surface_distance

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SUMMARY_METRICS", "SUMMARY_KEYS", "EmptyPolicy", "case_metrics", "group_dice", "summarize"]

DEFAULT_SUMMARY_METRICS: tuple[str, ...] = ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "volume_rel_diff")
# The summary's keys that are not class names (summarize() refuses a class of these names).
SUMMARY_KEYS = frozenset(
    {"mean_dice", "bootstrap", "empty_policy", "ensemble", "per_group", "n_cases", "physical_spacing"}
)
# Margin (voxels) kept around the union bounding box before surface-distance computations.
_CROP_MARGIN = 1  # as MONAI's get_mask_edges(crop=True)


@dataclass(frozen=True)
class EmptyPolicy:
    """Values of the overlap scores (dice, iou, nsd) when a class is empty on one or both sides.

    ``None`` means the score is reported as missing (NaN). Surface distances (hd95, assd) are
    always NaN when either side is empty, whatever the policy.
    """

    both_empty: float | None = 1.0
    ref_empty_only: float | None = 0.0
    pred_empty_only: float | None = 0.0

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-serialisable description of the policy for summaries."""
        out: dict[str, Any] = {k: (None if v is None else float(v)) for k, v in asdict(self).items()}
        out["applies_to"] = ["dice", "iou", "nsd"]
        out["distances_when_any_empty"] = None
        return out

    def value(self, ref_empty: bool, pred_empty: bool) -> float:
        """Score to report for the given emptiness situation (NaN for missing)."""
        if ref_empty and pred_empty:
            v = self.both_empty
        elif ref_empty:
            v = self.ref_empty_only
        elif pred_empty:
            v = self.pred_empty_only
        else:
            raise ValueError("EmptyPolicy.value called although neither mask is empty")
        return math.nan if v is None else float(v)


def dice_score(tp: int, n_pred: int, n_ref: int, policy: EmptyPolicy = EmptyPolicy()) -> float:
    """Dice from the overlap and the two mask sizes; the ``policy`` value when either mask is empty.

    The one Dice of the project: evaluation (:func:`case_metrics`) and training's validation use it.
    """
    if n_pred == 0 or n_ref == 0:
        return policy.value(n_ref == 0, n_pred == 0)
    return 2.0 * tp / (n_pred + n_ref)


def _check_label_volume(name: str, arr: np.ndarray) -> np.ndarray:
    """Validate a label volume; integral floats (e.g. from nibabel ``get_fdata``) are accepted."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label volume, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name} has non-integer values; expected an integer label volume")
    return arr


def _union_bbox(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by ``margin`` voxels and clipped to the array."""
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        lo = max(int(idx[0]) - margin, 0)
        hi = min(int(idx[-1]) + 1 + margin, union.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def _surface_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> tuple[float, float, float]:
    """HD95 (mm), ASSD (mm) and NSD for two non-empty binary masks.

    Uses MONAI's own building blocks (``get_mask_edges`` then ``get_surface_distance``, the KD-tree
    path that ``compute_hausdorff_distance`` / ``compute_average_surface_distance`` /
    ``compute_surface_dice`` run on CPU) on numpy arrays, once per class instead of three times,
    and aggregates exactly as those functions do. Staying in numpy avoids torch's thread pool:
    measured on 2 cores, the public functions were ~4x slower alone and >10x slower whenever
    another process was using a core.
    ``tests/test_metrics.py`` checks equality with the public MONAI functions.
    """
    box = _union_bbox(pred_mask, ref_mask, _CROP_MARGIN)
    edges_pred, edges_ref = get_mask_edges(pred_mask[box], ref_mask[box], crop=False)
    sp = np.asarray(spacing, dtype=np.float64)
    d_pred_ref = np.asarray(get_surface_distance(edges_pred, edges_ref, distance_metric="euclidean", spacing=sp))
    d_ref_pred = np.asarray(get_surface_distance(edges_ref, edges_pred, distance_metric="euclidean", spacing=sp))
    # compute_hausdorff_distance(percentile=95, directed=False): max of the two directed percentiles.
    hd95 = max(float(np.percentile(d_pred_ref, 95)), float(np.percentile(d_ref_pred, 95)))
    # compute_average_surface_distance(symmetric=True): mean of the pooled distances.
    assd = float(np.concatenate([d_pred_ref, d_ref_pred]).astype(np.float64).mean())
    # compute_surface_dice (voxel surfaces): boundary points within tolerance / all boundary points.
    within = int(np.count_nonzero(d_pred_ref <= tolerance_mm)) + int(np.count_nonzero(d_ref_pred <= tolerance_mm))
    nsd = within / (d_pred_ref.size + d_ref_pred.size)
    return hd95, assd, float(nsd)


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float = 1.0,
    policy: EmptyPolicy = EmptyPolicy(),
) -> list[dict[str, Any]]:
    """Metrics of one case, one dict per foreground class of ``labels`` (label 0 is skipped).

    ``pred``/``ref`` are integer label volumes (2D or 3D) of equal shape, ``spacing`` the voxel
    size in mm per axis. Distances are in mm, volumes in mL; missing values are NaN.
    """
    pred, ref, spacing = _checked_case(pred, ref, spacing, nsd_tolerance_mm)
    rows: list[dict[str, Any]] = []
    for k, name in sorted(labels.items()):
        if k != 0:
            scores = _class_metrics(pred == k, ref == k, spacing, nsd_tolerance_mm, policy)
            rows.append({"class_index": int(k), "class_name": str(name), **scores})
    return rows


def _checked_case(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``pred``, ``ref`` and ``spacing`` checked for :func:`case_metrics`; ``ValueError`` saying what is wrong."""
    pred = _check_label_volume("pred", pred)
    ref = _check_label_volume("ref", ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: pred {pred.shape} vs ref {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {pred.ndim}D volume {pred.shape}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be finite and >= 0, got {nsd_tolerance_mm}")
    return pred, ref, spacing


def _class_metrics(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], nsd_tolerance_mm: float, policy: EmptyPolicy
) -> dict[str, Any]:
    """The metrics of one class from its predicted (``p``) and reference (``r``) masks."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tp = int(np.count_nonzero(p & r))
    n_pred = int(np.count_nonzero(p))
    n_ref = int(np.count_nonzero(r))
    ref_empty, pred_empty = n_ref == 0, n_pred == 0
    dice = dice_score(tp, n_pred, n_ref, policy)
    if ref_empty or pred_empty:
        iou = nsd = policy.value(ref_empty, pred_empty)
        hd95 = assd = math.nan
    else:
        iou = tp / (n_pred + n_ref - tp)
        hd95, assd, nsd = _surface_metrics(p, r, spacing, nsd_tolerance_mm)
    return {
        "dice": float(dice),
        "iou": float(iou),
        "hd95_mm": float(hd95),
        "assd_mm": float(assd),
        "nsd": float(nsd),
        "ref_volume_ml": n_ref * voxel_ml,
        "pred_volume_ml": n_pred * voxel_ml,
        "volume_rel_diff": math.nan if ref_empty else (n_pred - n_ref) / n_ref,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_ref - tp,
        "ref_empty": bool(ref_empty),
        "pred_empty": bool(pred_empty),
    }


def _json_float(x: float) -> float | None:
    """Plain float, with NaN/inf mapped to None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _bootstrap_means(x: np.ndarray, n_bootstrap: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """Means of ``n_bootstrap`` resamples of ``x``: of its values, or of whole groups when ``groups`` is given."""
    rng = np.random.default_rng(seed)
    if groups is not None:  # a cluster bootstrap: resample groups, the mean over their pooled values
        _, codes = np.unique(groups.astype(str), return_inverse=True)
        sums, counts = np.bincount(codes, weights=x), np.bincount(codes).astype(np.float64)
        draws = rng.integers(0, sums.size, size=(n_bootstrap, sums.size))
        return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    n = x.size
    means = np.empty(n_bootstrap, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bound memory of the index matrix
    for start in range(0, n_bootstrap, chunk):
        stop = min(start + chunk, n_bootstrap)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def _describe(values: np.ndarray, n_bootstrap: int, seed: int, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Descriptive statistics plus percentile-bootstrap 95% CI of the mean (NaNs excluded).

    With ``groups`` (one label per value: the patient or site), the bootstrap resamples whole groups.
    """
    valid = ~np.isnan(values)
    x = values[valid]
    n = int(x.size)
    keys = ("mean", "std", "median", "iqr", "min", "max", "ci95_low", "ci95_high")
    if n == 0:
        return {**{k: None for k in keys}, "n": 0}
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    out: dict[str, Any] = {
        "mean": _json_float(x.mean()),
        "std": _json_float(x.std(ddof=1)) if n > 1 else None,
        "median": _json_float(med),
        "iqr": _json_float(q75 - q25),
        "min": _json_float(x.min()),
        "max": _json_float(x.max()),
        "n": n,
        "ci95_low": None,
        "ci95_high": None,
    }
    if n_bootstrap > 0:
        means = _bootstrap_means(x, n_bootstrap, seed, None if groups is None else np.asarray(groups)[valid])
        lo, hi = np.percentile(means, [2.5, 97.5])
        out["ci95_low"], out["ci95_high"] = _json_float(lo), _json_float(hi)
    return out


def _groups(rows: pd.DataFrame) -> np.ndarray | None:
    """The bootstrap's resampling unit per row: its ``group`` (else its case), or None without a group column."""
    if "group" not in rows.columns:
        return None
    groups = rows["group"].astype("string").replace("", pd.NA)
    if not groups.notna().any():
        return None
    own = "case:" + (rows["case_id"] if "case_id" in rows.columns else rows.index.to_series()).astype(str)
    return groups.fillna(own).to_numpy(dtype=str)


def summarize(
    per_case: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_SUMMARY_METRICS,
    n_bootstrap: int = 2000,
    seed: int = 0,
    policy: EmptyPolicy | None = None,
) -> dict[str, Any]:
    """Summarise a per-case table (rows from :func:`case_metrics`, any extra columns allowed).

    Returns ``{class_name: {metric: {mean, std, median, iqr, min, max, n, ci95_low, ci95_high}},
    "mean_dice": ..., "bootstrap": {"n", "seed"}, ["empty_policy": ...]}``. NaNs are excluded
    (``n`` counts non-missing values); ``std`` is the sample std (ddof=1). With a ``group`` column (patient
    or site; empty: the case is its own group), the bootstrap resamples whole groups. Each (class, metric)
    bootstrap uses a fresh ``numpy.random.default_rng(seed)``, so results do not depend on which
    other classes/metrics are summarised. Everything is plain Python (NaN -> None).
    """
    if "class_name" not in per_case.columns:
        raise ValueError("per_case needs a 'class_name' column")
    missing = [m for m in metrics if m not in per_case.columns]
    if missing:
        raise ValueError(f"per_case lacks metric columns {missing}; has {list(per_case.columns)}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")

    summary: dict[str, Any] = {}
    class_dice_means: list[float] = []
    for class_name, group in per_case.groupby("class_name", sort=False):
        name = str(class_name)
        if name in SUMMARY_KEYS:
            raise ValueError(f"class name {name!r} collides with a reserved summary key")
        groups = _groups(group)
        summary[name] = {
            m: _describe(pd.to_numeric(group[m], errors="coerce").to_numpy(np.float64), n_bootstrap, seed, groups)
            for m in metrics
        }
        if "dice" in group.columns:
            dice = pd.to_numeric(group["dice"], errors="coerce").to_numpy(np.float64)
            dice = dice[~np.isnan(dice)]
            if dice.size:
                class_dice_means.append(float(dice.mean()))
    summary["mean_dice"] = _json_float(np.mean(class_dice_means)) if class_dice_means else None
    summary["bootstrap"] = {"n": int(n_bootstrap), "seed": int(seed)}
    if policy is not None:
        summary["empty_policy"] = policy.describe()
    logger.debug("summarised %d rows, %d classes", len(per_case), len(summary) - 2)
    return summary


def group_dice(
    per_case: pd.DataFrame, policy: EmptyPolicy = EmptyPolicy(), n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any] | None:
    """Dice per group, from the voxel counts pooled over the group's cases, summarised per class.

    For a folder of 2D slices grouped by patient this is the patient's Dice over their stacked slices
    (the figure slice-wise MRI studies publish), where the per-case mean weighs a slice without the
    structure, predicted empty, as a perfect 1. None unless some group holds two or more cases. Returns
    ``{class_name: {"dice": statistics}, "mean_dice": ..., "n_groups": ...}`` (statistics as
    :func:`summarize`; empty on both sides over a whole group: the policy's value).
    """
    groups = _groups(per_case) if {"tp", "fp", "fn"} <= set(per_case.columns) else None
    if groups is None:
        return None
    rows = per_case.assign(group=groups)
    if rows.groupby("class_name")["group"].value_counts().max() < 2:
        return None
    out: dict[str, Any] = {}
    means = []
    for name, cls_rows in rows.groupby("class_name", sort=False):
        sums = cls_rows.groupby("group")[["tp", "fp", "fn"]].sum()
        dice = np.array(
            [dice_score(int(t), int(t + p), int(t + f), policy) for t, p, f in sums.itertuples(index=False)],
            dtype=np.float64,
        )
        out[str(name)] = {"dice": _describe(dice, n_bootstrap, seed)}
        if np.isfinite(dice).any():
            means.append(float(np.nanmean(dice)))
    out["mean_dice"] = _json_float(np.mean(means)) if means else None
    out["n_groups"] = int(rows["group"].nunique())
    return out
