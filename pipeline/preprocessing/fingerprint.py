"""Dataset fingerprint: what the planner knows about the data.

:func:`fingerprint_dataset` gives one row per case (written as ``fingerprint.csv``): shape, spacing,
orientation and dtype as stored; spacing and shape per RAS axis; the shape of the body crop box (voxels above
the image minimum, the region :func:`~pipeline.preprocessing.transforms.body_mask` keeps); foreground voxel
count per class; per channel intensity mean, std, min, max and the 0.5/50/99.5 percentiles inside the
foreground (label > 0), computed from up to ``samples_per_case`` foreground voxels drawn with a per-case seed;
per foreground class its thickness and its centroid along each RAS axis (mm), and the foreground's extent
along each RAS axis (mm), from which the planner tells classes that lie in a fixed order along an axis.
The drawn samples are kept (``fingerprint_samples.npz``) for the dataset-level statistics
(:func:`intensity_statistics`) and to skip unchanged cases on a rerun.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.core import io
from pipeline.core.cases import Case, DatasetInfo
from pipeline.core.labels import read_label, stored_values, to_classes
from pipeline.core.parallel import run_pool
from pipeline.core.readers import read_scan

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.csv"
SAMPLES_FILE = "fingerprint_samples.npz"
PERCENTILES = (0.5, 50.0, 99.5)


def source_key(case: Case) -> str:
    """Size and modification time of every file of a case: a changed file means a new fingerprint."""
    parts = []
    for path in (*case.images, case.label):
        if path is not None:
            st = Path(path).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def _bbox_shape(mask: np.ndarray) -> list[int]:
    """Extent (voxels) of the True region along each axis; 0 when empty."""
    shape = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        shape.append(int(hit[-1] - hit[0] + 1) if hit.size else 0)
    return shape


def structure_thickness(label: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Thickness in voxels of each foreground class present: 2 x its voxels / its boundary voxels.

    A ribbon ``w`` voxels wide gives ``w``, a ball of diameter ``d`` about ``d / 3``.
    """
    thickness = {}
    for k in labels:
        mask = label == k
        n = int(mask.sum()) if k else 0
        if n:
            boundary = n - int(ndimage.binary_erosion(mask, border_value=1).sum())
            thickness[k] = 2.0 * n / max(boundary, 1)
    return thickness


def class_layout(label: np.ndarray, labels: Sequence[int], zooms: Sequence[float]) -> dict[str, float]:
    """Centroid (mm, stored axis order) of each foreground class present and the foreground's extent (mm).

    Keys ``centroid_<k>_<axis>`` and ``extent_<axis>``; nothing without foreground."""
    out: dict[str, float] = {}
    foreground = label > 0
    if not foreground.any():
        return out
    for axis, extent in enumerate(_bbox_shape(foreground)):
        out[f"extent_{axis}"] = extent * float(zooms[axis])
    for k in labels:
        if k and (label == k).any():
            for axis, c in enumerate(ndimage.center_of_mass(label == k)):
                out[f"centroid_{k}_{axis}"] = float(c) * float(zooms[axis])
    return out


def fingerprint_case(
    case: Case, labels: Sequence[int], samples_per_case: int = 10_000, label_values: Sequence[int] = ()
) -> tuple[dict, np.ndarray]:
    """One row of the fingerprint table and the foreground intensity samples, (C, n) float32.

    ``labels`` are the classes, ``label_values`` their stored values (see :mod:`pipeline.core.labels`)."""
    image, header = read_scan(case.images)  # (C, X, Y, Z) float32, stored axis order
    affine, dtype = np.asarray(header.affine), header.dtype
    spatial = image.shape[1:]
    ornt = nib.orientations.io_orientation(affine)
    ras = np.argsort(ornt[:, 0])  # stored axis that becomes RAS axis i
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    row: dict = {
        "case_id": case.case_id,
        "shape": "x".join(str(s) for s in spatial),
        "spacing": "x".join(f"{z:.4g}" for z in zooms),
        "orientation": "".join(nib.aff2axcodes(affine)),
        "dtype": dtype,
        "channels": int(image.shape[0]),
    }
    flat = image.reshape(image.shape[0], -1)
    body = (image > flat.min(axis=1).reshape(-1, 1, 1, 1)).any(axis=0)
    crop = _bbox_shape(body) if body.any() else list(spatial)
    for i in range(3):
        row[f"ras_spacing_{i}"] = float(zooms[ras[i]])
        row[f"ras_shape_{i}"] = int(spatial[ras[i]])
        row[f"crop_shape_{i}"] = int(crop[ras[i]])
    foreground = np.zeros(spatial, dtype=bool)
    if case.label is not None:
        label, _ = read_label(case.label, stored_values(len(labels), label_values), like=case.images[0])
        label = to_classes(label, label_values, np.int64).reshape(spatial)
        counts = np.bincount(np.clip(label, 0, None).ravel(), minlength=max(labels, default=0) + 1)
        for k in labels:
            if k:
                row[f"voxels_{k}"] = int(counts[k])
        foreground = label > 0
        finest = min((float(z) for z, n in zip(zooms, spatial, strict=True) if n > 1), default=1.0)
        for k, voxels in structure_thickness(label, labels).items():
            row[f"thickness_mm_{k}"] = voxels * finest
        row["layout_measured"] = True  # thickness and class layout: a row from before lacks them
        for key, value in class_layout(label, labels, zooms).items():
            name, stored = key.rsplit("_", 1)
            ras_axis, direction = ornt[int(stored)]  # direction -1: the stored axis runs against RAS
            row[f"ras_{name}_{int(ras_axis)}"] = value * direction if name.startswith("centroid") else value
    source = "foreground" if foreground.any() else "body"
    where = np.flatnonzero(foreground if foreground.any() else body.ravel() if body.any() else np.ones(body.size, bool))
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    if where.size > samples_per_case:
        where = np.sort(rng.choice(where, samples_per_case, replace=False))
    samples = flat[:, where]
    row["intensity_source"] = source
    for c in range(image.shape[0]):
        values = samples[c]
        stats = _stats(values)
        for name, value in stats.items():
            row[f"fg{c}_{name}"] = value
    row["source_key"] = source_key(case)
    return row, samples.astype(np.float32)


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {k: float("nan") for k in ("mean", "std", "min", "max", *(f"p{p:g}" for p in PERCENTILES))}
    v = values.astype(np.float64)
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    out.update({f"p{p:g}": float(q) for p, q in zip(PERCENTILES, np.percentile(v, PERCENTILES), strict=True)})
    return out


def _fingerprint_job(args: tuple[Case, tuple[int, ...], int, tuple[int, ...]]) -> tuple[dict, np.ndarray]:
    return fingerprint_case(*args)


def fingerprint_dataset(
    info: DatasetInfo,
    workers: int = 1,
    samples_per_case: int = 10_000,
    cache_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fingerprint table (one row per case, in case order) and each case's foreground samples.

    With ``cache_dir``, cases whose files are unchanged since the fingerprint stored there are not read
    again, and the result is written back there (atomically).
    """
    labels = tuple(sorted(info.labels))
    cached_rows: dict[str, dict] = {}
    cached_samples: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        cached_rows, cached_samples = _read_cache(Path(cache_dir), samples_per_case)
    rows: dict[str, dict] = {}
    samples: dict[str, np.ndarray] = {}
    todo = []
    for case in info.cases:
        old = cached_rows.get(case.case_id)
        if old is not None and case.case_id in cached_samples and old.get("source_key") == source_key(case) and (
            "layout_measured" in old or case.label is None
        ):
            rows[case.case_id], samples[case.case_id] = old, cached_samples[case.case_id]
        else:
            todo.append((case, labels, samples_per_case, tuple(info.label_values)))
    if cached_rows:
        logger.info("fingerprint: %d case(s) unchanged, %d to read", len(rows), len(todo))
    for row, s in run_pool(_fingerprint_job, todo, workers, "fingerprint"):
        rows[row["case_id"]], samples[row["case_id"]] = row, s
    table = pd.DataFrame([rows[c.case_id] for c in info.cases])
    if cache_dir is not None and todo:
        cache_dir = Path(cache_dir)
        io.write_csv(cache_dir / FINGERPRINT_FILE, table)
        io.write_atomic(cache_dir / SAMPLES_FILE, lambda p: np.savez(p, **_npz_keys(samples)))
    return table, samples


def _npz_keys(samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"case_{i}": a for i, a in enumerate(samples.values())} | {"case_ids": np.asarray(list(samples), dtype=str)}


def _read_cache(folder: Path, samples_per_case: int) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    try:
        table = pd.read_csv(folder / FINGERPRINT_FILE, dtype={"case_id": str, "source_key": str})
        with np.load(folder / SAMPLES_FILE) as z:
            ids = [str(c) for c in z["case_ids"]]
            samples = {cid: z[f"case_{i}"] for i, cid in enumerate(ids)}
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return {}, {}
    # a cache drawn with another sample budget is stale
    samples = {k: v for k, v in samples.items() if v.shape[1] <= samples_per_case}
    rows = {str(r["case_id"]): {k: v for k, v in r.items() if not pd.isna(v)} for r in table.to_dict("records")}
    for row in rows.values():
        row["case_id"] = str(row["case_id"])
    return rows, samples


def intensity_statistics(
    samples: Mapping[str, np.ndarray], clip: Sequence[float] | None = None
) -> list[dict[str, float]]:
    """Dataset-level statistics per channel of the pooled foreground samples.

    Also ``clipped_mean``/``clipped_std``: of the samples clipped to ``clip`` (default: their own
    0.5/99.5 percentile window), the statistics CT normalisation z-scores with.
    """
    arrays = [a for a in samples.values() if a.size]
    if not arrays:
        return []
    pooled = np.concatenate(arrays, axis=1).astype(np.float64)
    out = []
    for values in pooled:
        stats = _stats(values)
        lo, hi = clip if clip else (stats["p0.5"], stats["p99.5"])
        clipped = np.clip(values, lo, hi)
        stats.update(clipped_mean=float(clipped.mean()), clipped_std=float(clipped.std()), n=int(values.size))
        out.append(stats)
    return out
