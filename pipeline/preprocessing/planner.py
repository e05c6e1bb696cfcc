"""The planner: the preprocessing/network plan derived from the dataset fingerprint.

Every value is overridable in :class:`pipeline.config.PreprocessConfig` (:func:`make_plan`):

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

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.config import PreprocessConfig
from pipeline.core.dataset import DatasetInfo
from pipeline.core.image2d import match_channels
from pipeline.preprocessing.fingerprint import intensity_statistics
from pipeline.preprocessing.plan import Plan

logger = logging.getLogger(__name__)

# Memory estimate (see activation_bytes_per_voxel)
BYTES_PER_VALUE = 4  # float32 activations
TENSORS_PER_LEVEL = 6  # per block: conv output, norm output, activation, for each of its two convolutions
MAX_WIDTH = 320  # feature maps per level are capped here (as in common U-Net configurations)
MIN_AXIS = 4  # an axis is halved only while it keeps at least this many voxels
MIN_PATCH = 8  # smallest patch edge the planner shrinks to


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
    if info.modalities_declared:  # 2D pictures of a grey dataset stored as RGB become grey, and back
        n_channels = len(info.modalities)
    else:
        n_channels = int(fingerprints["channels"].max()) if "channels" in fingerprints else max(len(info.modalities), 1)
    samples = {k: match_channels(v, n_channels) if v.shape[0] != n_channels else v for k, v in samples.items()}
    stats = intensity_statistics(samples, cfg.ct_clip)
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
        label_values=tuple(info.label_values),
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
