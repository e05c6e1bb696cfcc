"""Dataset fingerprint and the preprocessing/network plan derived from it.

Fingerprint (:func:`fingerprint_dataset`, one row per case, written as ``fingerprint.csv``): shape, spacing,
orientation and dtype as stored; spacing and shape per RAS axis; the shape of the body crop box (voxels above
the image minimum, the region :func:`~pipeline.preprocessing.transforms.body_mask` keeps); foreground voxel count
per class;
per channel intensity mean, std, min, max and the 0.5/50/99.5 percentiles inside the foreground (label > 0),
computed from up to ``samples_per_case`` foreground voxels drawn with a per-case seed. The drawn samples are
kept (``fingerprint_samples.npz``) for the dataset-level statistics and to skip unchanged cases on a rerun.

Plan (:func:`make_plan`), every value overridable in :class:`pipeline.config.PreprocessConfig`:

* target spacing: the median spacing per RAS axis. When the coarsest median axis is more than
  ``anisotropy_threshold`` times the finest, the data count as anisotropic: that slow axis takes a low
  percentile (``anisotropic_percentile``) of its spacings instead of the median (never finer than the
  in-plane spacing), so thick-slice scans are not upsampled to in-plane resolution; preprocessing then
  resamples the in-plane axes and the slow axis in two separate steps.
* normalisation per channel by the modality name in ``dataset.json``: ``CT`` -> clip to the 0.5/99.5
  percentiles of the dataset's foreground, then z-score with the mean/std of the clipped foreground samples;
  anything else -> per-image z-score.
* 2D and 3D patch sizes and network depth: start from the median preprocessed (cropped, resampled) shape
  and shrink the physically longest axis until one training batch fits ``memory_budget_gb`` by
  :func:`activation_bytes_per_voxel`; each axis is a multiple of ``2**pool`` where ``pool`` is the number
  of times it can be halved while staying >= 4 voxels.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import multiprocessing as mp
import signal
import sys
import zlib
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.transforms import MapTransform
from tqdm import tqdm

from pipeline.config import PreprocessConfig
from pipeline.core import io
from pipeline.core.dataset import Case, DatasetInfo
from pipeline.core.readers import read_array

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.csv"
SAMPLES_FILE = "fingerprint_samples.npz"
PERCENTILES = (0.5, 50.0, 99.5)
SCHEMES = ("ct", "zscore", "none")

# Memory estimate (see activation_bytes_per_voxel)
BYTES_PER_VALUE = 4  # float32 activations
TENSORS_PER_LEVEL = 6  # per block: conv output, norm output, activation, for each of its two convolutions
MAX_WIDTH = 320  # feature maps per level are capped here (as in common U-Net configurations)
MIN_AXIS = 4  # an axis is halved only while it keeps at least this many voxels
MIN_PATCH = 8  # smallest patch edge the planner shrinks to


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    """What preprocessing did, and what inference must redo on a new scan.

    The first five fields are the original plan; the rest have defaults so plans written before they
    existed still load (:meth:`from_dict`). ``intensity`` holds one entry per input channel:
    ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}``, ``{"scheme": "zscore"}`` (per image) or
    ``{"scheme": "none"}``; empty means "use ``normalization`` for every channel".
    """

    target_spacing: tuple[float, float, float]
    normalization: str
    crop_foreground: bool
    labels: dict[int, str]
    modalities: dict[int, str]
    intensity: tuple[dict, ...] = ()
    slow_axis: int | None = None  # anisotropic data: RAS axis resampled apart from the other two
    image_interp: str = "linear"  # in-plane (or all axes) image interpolation: linear | spline
    slow_axis_interp: str = "linear"  # image interpolation along the slow axis: linear | nearest | spline
    label_interp: str = "nearest"  # nearest | linear (one-hot linear, then arg-max)
    configurations: dict = field(default_factory=dict)  # "2d"/"3d": patch_size, pool_per_axis, depth, ...
    fingerprint: dict = field(default_factory=dict)  # dataset summary the plan came from (informational)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    def transform_kwargs(self) -> dict:
        """Keyword arguments of :func:`~pipeline.preprocessing.transforms.preprocessing` for this plan's chain."""
        return {
            "target_spacing": tuple(self.target_spacing),
            "normalization": self.normalization,
            "crop_foreground": self.crop_foreground,
            "intensity": [dict(c) for c in self.intensity] or None,
            "slow_axis": self.slow_axis,
            "image_interp": self.image_interp,
            "slow_axis_interp": self.slow_axis_interp,
            "label_interp": self.label_interp,
            "num_classes": self.num_classes,
        }

    def volume_hash(self) -> str:
        """Hash of everything that determines the written volumes (not the patch/network plan)."""
        key = {**self.transform_kwargs(), "labels": {str(k): v for k, v in sorted(self.labels.items())}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "target_spacing": list(self.target_spacing),
            "normalization": self.normalization,
            "crop_foreground": self.crop_foreground,
            "labels": {str(k): v for k, v in self.labels.items()},
            "modalities": {str(k): v for k, v in self.modalities.items()},
            "intensity": [dict(c) for c in self.intensity],
            "slow_axis": self.slow_axis,
            "image_interp": self.image_interp,
            "slow_axis_interp": self.slow_axis_interp,
            "label_interp": self.label_interp,
            "configurations": self.configurations,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        slow = d.get("slow_axis")
        return cls(
            tuple(float(s) for s in d["target_spacing"]),  # type: ignore[arg-type]
            d["normalization"],
            bool(d["crop_foreground"]),
            {int(k): v for k, v in d["labels"].items()},
            {int(k): v for k, v in d["modalities"].items()},
            intensity=tuple(dict(c) for c in d.get("intensity") or ()),
            slow_axis=None if slow is None else int(slow),
            image_interp=d.get("image_interp", "linear"),
            slow_axis_interp=d.get("slow_axis_interp", "linear"),
            label_interp=d.get("label_interp", "nearest"),
            configurations=dict(d.get("configurations") or {}),
            fingerprint=dict(d.get("fingerprint") or {}),
        )


# ------------------------------------------------------------------------------------ normalisation


def normalize_channels(image: torch.Tensor, channels: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Normalise each channel of a (C, ...) float tensor by its scheme; returns a new tensor (meta kept)."""
    if len(channels) != image.shape[0]:
        raise ValueError(f"normalisation planned for {len(channels)} channel(s), the image has {image.shape[0]}")
    out = image.clone() if image.is_floating_point() else image.float()
    for c, spec in enumerate(channels):
        x = out[c]
        scheme = spec.get("scheme", "zscore")
        if scheme == "ct":
            lo, hi = spec["clip"]
            x.clamp_(float(lo), float(hi)).sub_(float(spec["mean"])).div_(max(float(spec["std"]), 1e-8))
        elif scheme == "zscore":
            mean, std = x.mean(), x.std(unbiased=False)
            x.sub_(mean).div_(std if float(std) > 1e-8 else 1.0)
        elif scheme != "none":
            raise ValueError(f"unknown normalisation scheme {scheme!r} (expected one of {SCHEMES})")
    return out


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation from the plan (``ct``, ``zscore`` per image, ``none``).

    Not spatial, so nothing to invert.
    """

    def __init__(self, keys: Hashable | Sequence[Hashable], channels: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(keys)
        for spec in channels:
            if spec.get("scheme", "zscore") not in SCHEMES:
                raise ValueError(f"unknown normalisation scheme {spec.get('scheme')!r} (expected one of {SCHEMES})")
            if spec.get("scheme") == "ct" and not {"clip", "mean", "std"} <= set(spec):
                raise ValueError("ct normalisation needs 'clip', 'mean' and 'std' (dataset statistics)")
        self.channels = [dict(c) for c in channels]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_channels(d[key], self.channels)
        return d


# ------------------------------------------------------------------------------------- fingerprint


def source_key(case: Case) -> str:
    """Size and modification time of every file of a case: a changed file means a new fingerprint."""
    parts = []
    for path in (*case.images, case.label):
        if path is not None:
            st = Path(path).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def _read_channels(case: Case) -> tuple[np.ndarray, np.ndarray, str]:
    """Image as (C, X, Y, Z) float32 (stored axis order), its RAS affine and dtype."""
    arrays, affine, dtype = [], None, ""
    for path in case.images:
        data, header = read_array(path)
        if affine is None:
            affine, dtype = header.affine, header.dtype
        data = np.asarray(data, dtype=np.float32)
        arrays.extend([data] if data.ndim == 3 else list(np.moveaxis(data, -1, 0)))
    return np.stack(arrays), np.asarray(affine), dtype


def _bbox_shape(mask: np.ndarray) -> list[int]:
    """Extent (voxels) of the True region along each axis; 0 when empty."""
    shape = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        shape.append(int(hit[-1] - hit[0] + 1) if hit.size else 0)
    return shape


def fingerprint_case(case: Case, labels: Sequence[int], samples_per_case: int = 10_000) -> tuple[dict, np.ndarray]:
    """One row of the fingerprint table and the foreground intensity samples, (C, n) float32."""
    image, affine, dtype = _read_channels(case)
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
        label, _ = read_array(case.label)
        label = np.rint(np.asarray(label)).astype(np.int64).reshape(spatial)
        counts = np.bincount(np.clip(label, 0, None).ravel(), minlength=max(labels, default=0) + 1)
        for k in labels:
            if k:
                row[f"voxels_{k}"] = int(counts[k])
        foreground = label > 0
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


def _fingerprint_job(args: tuple[Case, tuple[int, ...], int]) -> tuple[dict, np.ndarray]:
    return fingerprint_case(*args)


def _init_worker() -> None:
    """One torch thread per worker; on Linux, die with the parent (a killed run leaves no orphans writing)."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass


def run_pool(fn: Any, jobs: Sequence, workers: int, desc: str) -> list:
    """``[fn(j) for j in jobs]`` in a fork process pool of ``workers`` (in order), with a progress bar."""
    bar = {"total": len(jobs), "desc": desc, "unit": "case"}
    if workers > 1 and len(jobs) > 1 and "fork" in mp.get_all_start_methods():
        chunk = max(1, min(8, len(jobs) // (8 * workers)))
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
            return list(tqdm(pool.map(fn, jobs, chunksize=chunk), **bar))
    return [fn(j) for j in tqdm(jobs, **bar)]


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
        if old is not None and case.case_id in cached_samples and old.get("source_key") == source_key(case):
            rows[case.case_id], samples[case.case_id] = old, cached_samples[case.case_id]
        else:
            todo.append((case, labels, samples_per_case))
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


# ------------------------------------------------------------------------------------------- planning


def plan_spacing(
    fingerprints: pd.DataFrame, anisotropy_threshold: float = 3.0, percentile: float = 10.0
) -> tuple[tuple[float, float, float], int | None]:
    """Target spacing per RAS axis and the slow axis (None when the data are not anisotropic).

    Median per axis; if the coarsest median axis exceeds ``anisotropy_threshold`` times the finest, that
    axis takes the ``percentile``-th percentile of its spacings instead (but not finer than the other axes).
    """
    spacings = np.stack([fingerprints[f"ras_spacing_{i}"].to_numpy(float) for i in range(3)], axis=1)
    target = np.median(spacings, axis=0)
    slow = int(np.argmax(target))
    others = [i for i in range(3) if i != slow]
    if target[slow] <= anisotropy_threshold * target[others].min():
        return _rounded(target), None
    target[slow] = max(float(np.percentile(spacings[:, slow], percentile)), float(target[others].max()))
    return _rounded(target), slow


def _rounded(spacing: np.ndarray) -> tuple[float, float, float]:
    """Spacing to 6 significant digits (headers store float32: 2.98 comes as 2.9799999)."""
    return tuple(float(f"{s:.6g}") for s in spacing)  # type: ignore[return-value]


def plan_normalization(
    modalities: Mapping[int, str],
    n_channels: int,
    stats: Sequence[Mapping[str, float]],
    mode: str = "auto",
    ct_clip: Sequence[float] | None = None,
    ct_mean_std: Sequence[float] | None = None,
) -> tuple[dict, ...]:
    """Per-channel normalisation: ``auto`` picks ``ct`` for a channel whose modality is named CT, else ``zscore``.

    ``ct``: clip to ``ct_clip`` (default: the foreground 0.5/99.5 percentiles), then z-score with
    ``ct_mean_std`` (default: mean/std of the clipped foreground samples, see :func:`intensity_statistics`).
    """
    out: list[dict] = []
    for c in range(n_channels):
        name = str(modalities.get(c, "")).strip().upper()
        scheme = ("ct" if name == "CT" else "zscore") if mode == "auto" else mode
        if scheme != "ct":
            out.append({"scheme": scheme})
            continue
        s = stats[c] if c < len(stats) else {}
        lo, hi = ct_clip if ct_clip else (s.get("p0.5", math.nan), s.get("p99.5", math.nan))
        mean, std = ct_mean_std if ct_mean_std else (s.get("clipped_mean", math.nan), s.get("clipped_std", math.nan))
        values = [float(v) for v in (lo, hi, mean, std)]
        if not all(np.isfinite(values)):
            raise ValueError(f"channel {c}: ct normalisation needs foreground intensities (or ct_clip and ct_mean_std)")
        out.append({"scheme": "ct", "clip": values[:2], "mean": values[2], "std": values[3]})
    return tuple(out)


def pool_per_axis(patch: Sequence[int]) -> list[int]:
    """How many times each axis can be halved while keeping at least ``MIN_AXIS`` (4) voxels."""
    return [int(math.floor(math.log2(p / MIN_AXIS))) if p >= 2 * MIN_AXIS else 0 for p in patch]


def activation_bytes_per_voxel(pools: Sequence[int], base_width: int, max_width: int = MAX_WIDTH) -> float:
    """Estimated training memory per input voxel of one sample through a U-Net.

    Level ``l`` (0 to ``max(pools)``) has ``w_l = min(base_width * 2**l, max_width)`` feature maps on a
    fraction ``f_l = prod_axes 2**-min(l, pool_axis)`` of the voxels. Each level keeps ``TENSORS_PER_LEVEL``
    (6) such maps for backprop in the encoder and as many in the decoder, and the backward pass needs about
    as much again for their gradients; all float32::

        bytes per voxel = 4 * 6 * 2 * 2 * sum_l w_l * f_l

    3D, base width 32, 4 halvings per axis: ~4.1 kB per voxel; 2D, 5 halvings: ~5.9 kB per pixel. Weights, optimiser
    state and framework overhead are not included (budget them apart).
    """
    total = 0.0
    for level in range(max(pools, default=0) + 1):
        fraction = math.prod(2.0 ** -min(level, p) for p in pools)
        total += min(base_width * 2**level, max_width) * fraction
    return BYTES_PER_VALUE * TENSORS_PER_LEVEL * 2 * 2 * total


def plan_patch(
    median_shape: Sequence[float],
    spacing: Sequence[float],
    budget_gb: float,
    batch_size: int,
    base_width: int,
    max_width: int = MAX_WIDTH,
) -> dict:
    """Largest patch, starting from the median shape, whose training batch fits ``budget_gb``.

    While over budget, the axis with the longest physical extent (mm) is shrunk by one pooling step.
    Every axis is a multiple of ``2**pool`` (:func:`pool_per_axis`). ``depth`` is the U-Net depth when
    every level halves every axis (the smallest pool count); ``pool_per_axis`` allows per-axis strides.
    """
    budget = budget_gb * 2**30
    patch = [max(MIN_PATCH, int(round(s))) for s in median_shape]
    while True:
        pools = pool_per_axis(patch)
        patch = [math.ceil(p / 2**k) * 2**k for p, k in zip(patch, pools, strict=True)]
        pools = pool_per_axis(patch)
        need = math.prod(patch) * activation_bytes_per_voxel(pools, base_width, max_width) * batch_size
        shrinkable = [i for i, p in enumerate(patch) if p > MIN_PATCH]
        if need <= budget or not shrinkable:
            if need > budget:
                logger.warning("patch %s needs %.2f GB, above the %.2f GB budget", patch, need / 2**30, budget_gb)
            break
        axis = max(shrinkable, key=lambda i: (patch[i] * spacing[i], patch[i]))
        patch[axis] = max(MIN_PATCH, patch[axis] - 2 ** pools[axis])
    return _configuration(patch, batch_size, base_width, max_width)


def _configuration(
    patch: Sequence[int], batch_size: int, base_width: int, max_width: int, depth: int | None = None
) -> dict:
    pools = pool_per_axis(patch)
    need = math.prod(patch) * activation_bytes_per_voxel(pools, base_width, max_width) * batch_size
    return {
        "patch_size": [int(p) for p in patch],
        "pool_per_axis": pools,
        "depth": int(depth if depth is not None else min(pools)),
        "batch_size": int(batch_size),
        "base_width": int(base_width),
        "estimated_gb": round(need / 2**30, 4),
    }


def median_preprocessed_shape(
    fingerprints: pd.DataFrame, target_spacing: Sequence[float], crop_foreground: bool = True
) -> list[float]:
    """Median shape per RAS axis after cropping (if on) and resampling to ``target_spacing``."""
    prefix = "crop_shape" if crop_foreground else "ras_shape"
    return [
        float(np.median(fingerprints[f"{prefix}_{i}"] * fingerprints[f"ras_spacing_{i}"] / target_spacing[i]))
        for i in range(3)
    ]


def make_plan(
    info: DatasetInfo, fingerprints: pd.DataFrame, samples: Mapping[str, np.ndarray], cfg: PreprocessConfig
) -> Plan:
    """The plan from the fingerprint; every value set in ``cfg`` wins over the planned one."""
    planned, slow = plan_spacing(fingerprints, cfg.anisotropy_threshold, cfg.anisotropic_percentile)
    spacing = tuple(float(s) for s in cfg.target_spacing) if cfg.target_spacing else planned
    stats = intensity_statistics(samples, cfg.ct_clip)
    n_channels = int(fingerprints["channels"].max()) if "channels" in fingerprints else max(len(info.modalities), 1)
    intensity = plan_normalization(info.modalities, n_channels, stats, cfg.normalization, cfg.ct_clip, cfg.ct_mean_std)
    schemes = {c["scheme"] for c in intensity}
    normalization = schemes.pop() if len(schemes) == 1 else "mixed"

    median = median_preprocessed_shape(fingerprints, spacing, cfg.crop_foreground)
    slice_axis = slow if slow is not None else 2
    in_plane = [a for a in range(3) if a != slice_axis]
    if cfg.patch_size_3d:
        conf3 = _configuration(cfg.patch_size_3d, cfg.batch_size_3d, cfg.base_width, MAX_WIDTH, cfg.depth_3d)
    else:
        conf3 = plan_patch(median, spacing, cfg.memory_budget_gb, cfg.batch_size_3d, cfg.base_width)
        if cfg.depth_3d is not None:
            conf3["depth"] = cfg.depth_3d
    if cfg.patch_size_2d:
        conf2 = _configuration(cfg.patch_size_2d, cfg.batch_size_2d, cfg.base_width, MAX_WIDTH, cfg.depth_2d)
    else:
        conf2 = plan_patch(
            [median[a] for a in in_plane],
            [spacing[a] for a in in_plane],
            cfg.memory_budget_gb,
            cfg.batch_size_2d,
            cfg.base_width,
        )
        if cfg.depth_2d is not None:
            conf2["depth"] = cfg.depth_2d
    conf2["slice_axis"] = slice_axis

    ras_spacing = fingerprints[[f"ras_spacing_{i}" for i in range(3)]].to_numpy(float)
    summary = {
        "n_cases": int(len(fingerprints)),
        "median_spacing": [float(v) for v in np.median(ras_spacing, axis=0)],
        "min_spacing": [float(v) for v in ras_spacing.min(axis=0)],
        "max_spacing": [float(v) for v in ras_spacing.max(axis=0)],
        "planned_spacing": list(planned),
        "anisotropic": slow is not None,
        "median_preprocessed_shape": [round(v, 2) for v in median],
        "memory_budget_gb": cfg.memory_budget_gb,
        "intensity": stats,
    }
    plan = Plan(
        spacing,  # type: ignore[arg-type]
        normalization,
        cfg.crop_foreground,
        dict(info.labels),
        dict(info.modalities),
        intensity=intensity,
        slow_axis=slow,
        image_interp=cfg.image_interp,
        slow_axis_interp=cfg.slow_axis_interp,
        label_interp=cfg.label_interp,
        configurations={"2d": conf2, "3d": conf3},
        fingerprint=summary,
    )
    logger.info(
        "plan: spacing %s (slow axis %s), normalisation %s, 3d patch %s depth %d, 2d patch %s depth %d",
        tuple(round(s, 4) for s in spacing),
        slow,
        normalization,
        conf3["patch_size"],
        conf3["depth"],
        conf2["patch_size"],
        conf2["depth"],
    )
    return plan
