"""Tests for pipeline.evaluation.metrics on small, hand-checkable volumes."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from pipeline.evaluation.metrics import EmptyPolicy, case_metrics, group_dice, summarize

LABELS = {0: "background", 1: "fg"}


def _cube(shape: tuple[int, ...], start: tuple[int, ...], size: int = 4, label: int = 1) -> np.ndarray:
    vol = np.zeros(shape, dtype=np.uint8)
    vol[tuple(slice(s, s + size) for s in start)] = label
    return vol


def _one(pred: np.ndarray, ref: np.ndarray, spacing, **kw) -> dict:
    rows = case_metrics(pred, ref, spacing, LABELS, **kw)
    assert len(rows) == 1
    return rows[0]


def _blob(shape: tuple[int, ...], rng: np.random.Generator, sigma: float = 2.5) -> np.ndarray:
    """Random smooth label volume: label 1 where the field is high, label 2 where it is low."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    field /= field.std()
    vol = np.zeros(shape, dtype=np.uint8)
    vol[field > 0.6] = 1
    vol[field < -0.8] = 2
    return vol


def _scipy_surface_reference(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> tuple[float, float, float]:
    """Independent HD95/ASSD/NSD: surface = mask minus its erosion, distances from an EDT in mm."""
    sp = ndimage.binary_erosion(pred) ^ pred
    sr = ndimage.binary_erosion(ref) ^ ref
    d_pr = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    d_rp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assd = np.concatenate([d_pr, d_rp]).mean()
    nsd = (np.sum(d_pr <= tol) + np.sum(d_rp <= tol)) / (d_pr.size + d_rp.size)
    return float(hd95), float(assd), float(nsd)


# ---------------------------------------------------------------- overlap


def test_dice_iou_half_overlapping_cubes() -> None:
    ref = _cube((12, 10, 10), (2, 3, 3))
    pred = _cube((12, 10, 10), (4, 3, 3))  # shifted by 2 of 4 voxels: overlap 32 of 64
    row = _one(pred, ref, (1.0, 1.0, 1.0))
    assert row["tp"] == 32 and row["fp"] == 32 and row["fn"] == 32
    assert row["dice"] == pytest.approx(0.5, abs=1e-12)
    assert row["iou"] == pytest.approx(1 / 3, abs=1e-12)
    assert row["ref_empty"] is False and row["pred_empty"] is False


def test_identical_masks_are_perfect() -> None:
    ref = _cube((10, 10, 10), (3, 3, 3))
    row = _one(ref.copy(), ref, (0.7, 0.7, 3.0))
    assert row["dice"] == 1.0 and row["iou"] == 1.0 and row["nsd"] == 1.0
    assert row["hd95_mm"] == 0.0 and row["assd_mm"] == 0.0
    assert row["volume_rel_diff"] == 0.0


def test_rows_per_foreground_class_and_2d() -> None:
    ref = np.zeros((20, 20), dtype=np.int64)
    ref[2:6, 2:6] = 1
    ref[10:15, 10:15] = 2
    pred = ref.copy()
    pred[10:15, 10:12] = 0
    rows = case_metrics(pred, ref, (1.0, 1.0), {0: "bg", 1: "a", 2: "b"})
    assert [r["class_index"] for r in rows] == [1, 2]
    assert [r["class_name"] for r in rows] == ["a", "b"]
    assert rows[0]["dice"] == 1.0
    assert rows[1]["dice"] == pytest.approx(2 * 15 / (15 + 25))
    expected_keys = {
        "class_index",
        "class_name",
        "dice",
        "iou",
        "hd95_mm",
        "assd_mm",
        "nsd",
        "ref_volume_ml",
        "pred_volume_ml",
        "volume_rel_diff",
        "tp",
        "fp",
        "fn",
        "ref_empty",
        "pred_empty",
    }
    assert set(rows[0]) == expected_keys


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        case_metrics(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), (1, 1, 1), LABELS)


def test_bad_spacing_rejected() -> None:
    vol = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError):
        case_metrics(vol, vol, (1.0, 1.0), LABELS)
    with pytest.raises(ValueError):
        case_metrics(vol, vol, (1.0, 0.0, 1.0), LABELS)


# ---------------------------------------------------------------- distances


def test_plate_shift_anisotropic_distance() -> None:
    # One-voxel-thick plates: every voxel is surface, every distance is the shift.
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[3, 2:6, 2:6] = 1
    pred = np.roll(ref, 2, axis=0)  # 2 voxels along axis 0
    row = _one(pred, ref, (2.5, 1.0, 1.0))
    assert row["hd95_mm"] == pytest.approx(5.0, abs=1e-5)  # 2 * 2.5 mm
    assert row["assd_mm"] == pytest.approx(5.0, abs=1e-5)
    # the same shift along an axis of 1 mm spacing gives 2 mm
    row = _one(np.roll(ref, 2, axis=0), ref, (1.0, 2.5, 2.5))
    assert row["hd95_mm"] == pytest.approx(2.0, abs=1e-5)


def test_extra_plate_asymmetric_assd() -> None:
    # pred = ref plate plus a second plate 2 voxels (5 mm) away:
    # pred->ref: n zeros, n fives; ref->pred: n zeros; ASSD = 5n / 3n, HD95 = 5.
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[3, 2:6, 2:6] = 1
    pred = ref.copy()
    pred[5, 2:6, 2:6] = 1
    row = _one(pred, ref, (2.5, 1.0, 1.0))
    assert row["hd95_mm"] == pytest.approx(5.0, abs=1e-5)
    assert row["assd_mm"] == pytest.approx(5.0 / 3.0, abs=1e-5)


def test_cube_shift_anisotropic_hand_computed() -> None:
    # 4x4x4 cubes, pred shifted by 2 voxels along axis 0 (spacing 2.5 mm). 56 surface voxels each.
    # pred->ref distances: x=4 face ring 12x0 and centre 4x1 mm (nearest ref ring voxel in-plane),
    # x=5 ring 12x0 (on ref's x=5 face), x=6 ring 12x2.5 mm, x=7 face 16x5 mm. Symmetric for ref->pred.
    # HD95: 95th pct of 56 sorted values hits the 16 trailing 5s -> 5 mm. ASSD = (4 + 30 + 80) / 56.
    ref = _cube((12, 10, 10), (2, 3, 3))
    pred = _cube((12, 10, 10), (4, 3, 3))
    row = _one(pred, ref, (2.5, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert row["hd95_mm"] == pytest.approx(5.0, abs=1e-5)
    assert row["assd_mm"] == pytest.approx(114.0 / 56.0, abs=1e-5)
    assert row["nsd"] == pytest.approx(28.0 / 56.0, abs=1e-6)  # 24 zeros + 4 ones per side
    # ignoring spacing would give 2 voxels; in mm along a 1 mm axis it is 2 mm
    row_iso = _one(np.moveaxis(pred, 0, 1), np.moveaxis(ref, 0, 1), (2.5, 1.0, 1.0))
    assert row_iso["hd95_mm"] == pytest.approx(2.0, abs=1e-5)


def test_distances_match_scipy_edt_on_random_blobs() -> None:
    rng = np.random.default_rng(42)
    spacing = (0.78, 0.78, 2.5)
    shape = (48, 40, 20)
    ref = _blob(shape, rng) == 1
    pred = _blob(shape, rng) == 1
    assert ref.any() and pred.any()
    row = _one(pred.astype(np.uint8), ref.astype(np.uint8), spacing, nsd_tolerance_mm=2.0)
    hd95, assd, nsd = _scipy_surface_reference(pred, ref, spacing, 2.0)
    assert row["hd95_mm"] == pytest.approx(hd95, rel=1e-4)
    assert row["assd_mm"] == pytest.approx(assd, rel=1e-4)
    assert row["nsd"] == pytest.approx(nsd, rel=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.78, 0.78, 6.5), (2.5, 1.0, 0.5)])
def test_distances_match_public_monai_functions(spacing: tuple[float, float, float]) -> None:
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    rng = np.random.default_rng(7)
    shape = (36, 30, 14)
    ref = _blob(shape, rng)
    pred = _blob(shape, rng)
    rows = case_metrics(pred, ref, spacing, {1: "a", 2: "b"}, nsd_tolerance_mm=1.5)
    for row, label in zip(rows, (1, 2), strict=True):
        p = torch.from_numpy(pred == label)[None, None]
        r = torch.from_numpy(ref == label)[None, None]
        sp = list(spacing)
        hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp).item()
        assd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=sp).item()
        nsd = compute_surface_dice(p, r, class_thresholds=[1.5], include_background=True, spacing=sp).item()
        assert row["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
        assert row["assd_mm"] == pytest.approx(assd, rel=1e-5)
        assert row["nsd"] == pytest.approx(nsd, rel=1e-6)


def test_nsd_tolerance() -> None:
    ref = _cube((12, 12, 12), (3, 3, 3), size=5)
    assert _one(ref.copy(), ref, (1.0, 1.0, 1.0))["nsd"] == 1.0
    ref_plate = np.zeros((10, 8, 8), np.uint8)
    ref_plate[3, 2:6, 2:6] = 1
    pred_plate = np.roll(ref_plate, 2, axis=0)  # every surface distance is exactly 2 mm
    assert _one(pred_plate, ref_plate, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)["nsd"] == 0.0
    assert _one(pred_plate, ref_plate, (1.0, 1.0, 1.0), nsd_tolerance_mm=2.0)["nsd"] == 1.0
    shifted = np.roll(ref, 3, axis=0)
    assert _one(shifted, ref, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)["nsd"] < 0.8


# ---------------------------------------------------------------- volumes


def test_volumes_in_ml_use_spacing() -> None:
    ref = _cube((12, 12, 12), (1, 1, 1), size=10)  # 1000 voxels
    pred = _cube((12, 12, 12), (1, 1, 1), size=10)
    pred[1:11, 1:11, 1] = 0  # 900 voxels
    row = _one(pred, ref, (1.0, 1.0, 1.0))
    assert row["ref_volume_ml"] == pytest.approx(1.0)
    assert row["pred_volume_ml"] == pytest.approx(0.9)
    assert row["volume_rel_diff"] == pytest.approx(-0.1)
    row = _one(pred, ref, (0.5, 0.5, 8.0))  # 2 mm^3 voxels
    assert row["ref_volume_ml"] == pytest.approx(2.0)
    assert row["pred_volume_ml"] == pytest.approx(1.8)


# ---------------------------------------------------------------- empty masks


def _empty_situations() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros((10, 10, 10), np.uint8)
    pred[1:3, 1:3, 1:3] = 2  # class 2: prediction only
    ref[6:9, 6:9, 6:9] = 3  # class 3: reference only
    return pred, ref, {0: "bg", 1: "both_empty", 2: "ref_empty", 3: "pred_empty"}


def test_empty_default_policy() -> None:
    pred, ref, labels = _empty_situations()
    both, ref_only, pred_only = case_metrics(pred, ref, (1.0, 1.0, 1.0), labels)
    assert (both["ref_empty"], both["pred_empty"]) == (True, True)
    assert (ref_only["ref_empty"], ref_only["pred_empty"]) == (True, False)
    assert (pred_only["ref_empty"], pred_only["pred_empty"]) == (False, True)
    for m in ("dice", "iou", "nsd"):
        assert both[m] == 1.0
        assert ref_only[m] == 0.0
        assert pred_only[m] == 0.0
    for row in (both, ref_only, pred_only):
        assert math.isnan(row["hd95_mm"]) and math.isnan(row["assd_mm"])
    assert math.isnan(both["volume_rel_diff"]) and math.isnan(ref_only["volume_rel_diff"])
    assert pred_only["volume_rel_diff"] == -1.0
    assert ref_only["fp"] == 8 and pred_only["fn"] == 27


def test_empty_custom_policy() -> None:
    pred, ref, labels = _empty_situations()
    policy = EmptyPolicy(both_empty=None, ref_empty_only=None, pred_empty_only=0.25)
    both, ref_only, pred_only = case_metrics(pred, ref, (1.0, 1.0, 1.0), labels, policy=policy)
    for m in ("dice", "iou", "nsd"):
        assert math.isnan(both[m])
        assert math.isnan(ref_only[m])
        assert pred_only[m] == 0.25
    for row in (both, ref_only, pred_only):
        assert math.isnan(row["hd95_mm"]) and math.isnan(row["assd_mm"])
    desc = policy.describe()
    assert desc["both_empty"] is None and desc["pred_empty_only"] == 0.25
    json.dumps(desc, allow_nan=False)


# ---------------------------------------------------------------- summarize


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": ["c1", "c2", "c3", "c4"] * 2,
            "class_name": ["a"] * 4 + ["b"] * 4,
            "dice": [0.5, 0.7, 0.9, np.nan, 0.2, 0.4, 0.6, 0.8],
            "hd95_mm": [1.0, 2.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],
        }
    )


def test_summarize_statistics() -> None:
    s = summarize(_table(), metrics=("dice", "hd95_mm"), n_bootstrap=500, seed=3)
    a = s["a"]["dice"]
    assert a["n"] == 3
    assert a["mean"] == pytest.approx(0.7)
    assert a["median"] == pytest.approx(0.7)
    assert a["std"] == pytest.approx(0.2)  # sample std, ddof=1
    assert a["iqr"] == pytest.approx(0.2)
    assert (a["min"], a["max"]) == (pytest.approx(0.5), pytest.approx(0.9))
    for cls in ("a", "b"):
        d = s[cls]["dice"]
        assert d["ci95_low"] <= d["mean"] <= d["ci95_high"]
        assert d["min"] <= d["ci95_low"] and d["ci95_high"] <= d["max"]
    assert s["b"]["hd95_mm"]["n"] == 0 and s["b"]["hd95_mm"]["mean"] is None
    assert s["mean_dice"] == pytest.approx((0.7 + 0.5) / 2)
    assert s["bootstrap"] == {"n": 500, "seed": 3}
    assert "empty_policy" not in s


def test_summarize_deterministic_and_json() -> None:
    df = _table()
    s1 = summarize(df, metrics=("dice", "hd95_mm"), seed=7, policy=EmptyPolicy())
    s2 = summarize(df, metrics=("dice", "hd95_mm"), seed=7, policy=EmptyPolicy())
    assert s1 == s2
    # a class's CI does not depend on which other metrics are summarised
    s3 = summarize(df, metrics=("dice",), seed=7)
    assert s3["a"]["dice"] == s1["a"]["dice"]
    text = json.dumps(s1, allow_nan=False)
    back = json.loads(text)
    assert back["b"]["hd95_mm"]["mean"] is None
    assert back["empty_policy"]["both_empty"] == 1.0
    for v in s1["a"]["dice"].values():
        assert v is None or type(v) in (float, int)


def test_summarize_on_case_metrics_rows() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(5):
        ref = _blob((24, 24, 16), rng)
        pred = _blob((24, 24, 16), rng)
        for r in case_metrics(pred, ref, (1.0, 1.0, 2.0), {1: "x", 2: "y"}):
            rows.append({"case_id": i, **r})
    s = summarize(pd.DataFrame(rows), n_bootstrap=200)
    assert set(s) >= {"x", "y", "mean_dice", "bootstrap"}
    assert set(s["x"]) == {"dice", "iou", "hd95_mm", "assd_mm", "nsd", "volume_rel_diff"}
    json.dumps(s, allow_nan=False)


def test_group_dice_pools_the_voxels_of_each_group() -> None:
    """Slices of one patient: the patient's Dice over the stacked slices, not the mean of slice Dice."""
    ref = np.zeros((2, 3, 10, 10), np.uint8)  # patients x slices
    pred = np.zeros_like(ref)
    ref[0, 0, 2:6, 2:6] = ref[0, 1, 2:4, 2:4] = 1  # patient a: 16 + 4 voxels, predicted 16 right, 4 missed,
    pred[0, 0, 2:6, 2:6] = pred[0, 2, 0, 0:4] = 1  # and 4 false positives on a slice without tumour
    ref[1, 1, 0:5, 0:5] = pred[1, 1, 0:5, 0:5] = 1  # patient b: perfect
    rows = []
    for p, group in enumerate("ab"):
        for s in range(3):
            for row in case_metrics(pred[p, s], ref[p, s], (1.0, 1.0), {1: "tumour"}):
                rows.append({"case_id": f"{group}{s}", "group": group, **row})
    per_case = pd.DataFrame(rows)
    out = group_dice(per_case, n_bootstrap=0)
    assert out is not None and out["n_groups"] == 2
    a = 2 * 16 / (20 + 20)  # pooled: tp 16, 20 predicted, 20 reference
    assert out["tumour"]["dice"]["mean"] == pytest.approx((a + 1.0) / 2)
    assert out["tumour"]["dice"]["min"] == pytest.approx(a)
    assert out["mean_dice"] == pytest.approx((a + 1.0) / 2)
    # slice-wise the two patients average differently (slice a1 scores 0, slice a2 0, empty b slices 1)
    assert summarize(per_case, n_bootstrap=0)["tumour"]["dice"]["mean"] != pytest.approx(out["mean_dice"])
    # one case per group, or no group column: nothing to pool
    assert group_dice(per_case.assign(group=per_case["case_id"]), n_bootstrap=0) is None
    assert group_dice(per_case.drop(columns="group"), n_bootstrap=0) is None


def test_summarize_missing_column() -> None:
    with pytest.raises(ValueError, match="nsd"):
        summarize(_table(), metrics=("dice", "nsd"))


# ---------------------------------------------------------------- speed


def test_speed_60_volumes_two_classes() -> None:
    rng = np.random.default_rng(0)
    shape = (40, 56, 40)
    cases = [(_blob(shape, rng), _blob(shape, rng)) for _ in range(60)]
    labels = {0: "background", 1: "anterior", 2: "posterior"}
    start = time.perf_counter()
    n_rows = 0
    for pred, ref in cases:
        n_rows += len(case_metrics(pred, ref, (1.0, 1.0, 1.0), labels))
    elapsed = time.perf_counter() - start
    assert n_rows == 120
    assert elapsed < 30.0, f"60 volumes took {elapsed:.1f} s"
