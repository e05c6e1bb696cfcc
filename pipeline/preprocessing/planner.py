"""The planner: the preprocessing/network plan derived from the dataset fingerprint.

Every value is overridable in the config (:func:`make_plan`):

* target spacing: the median spacing per RAS axis. When the coarsest median axis is more than
  ``anisotropy_threshold`` times the finest, the data count as anisotropic: that slow axis takes a low
  percentile (``anisotropic_percentile``) of its spacings instead of the median (never finer than the
  in-plane spacing), so thick-slice scans are not upsampled to in-plane resolution; preprocessing then
  resamples the in-plane axes and the slow axis in two separate steps.
* normalisation per channel by the modality name in ``dataset.json``: ``CT`` -> clip to the 0.5/99.5
  percentiles of the dataset's foreground, then z-score with the mean/std of the clipped foreground samples;
  anything else -> per-image z-score, over the body only (0 outside) when the body's crop box keeps less
  than ``BODY_MASK_FRACTION`` of the median image (nnU-Net's rule: a head on a black background).
* a one-slice axis (a 2D dataset) is never resampled; 2D pictures whose structures grow with the picture are
  first brought to one size (:mod:`pipeline.preprocessing.pictures`).
* resolution for training steps (:func:`coarsen_for_steps`): when the budget buys fewer than
  ``settings.MIN_STEPS`` training steps at that spacing (large 2D pictures on a CPU), the spacing across the
  slices is coarsened by the smallest factor that buys them, as long as the thinnest class stays
  ``COARSE_MIN_VOXELS`` voxels thick; thin structures keep their resolution (their patch is cropped instead).
* the training settings (2D or 3D and why, slice axis, patch, batch, network topology, foreground
  oversampling, iterations, epochs), each planned or overridden by the config, with its source:
  :mod:`pipeline.preprocessing.settings` (``Plan.settings``, read by every later stage).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.config import Config, PreprocessConfig
from pipeline.core.cases import DatasetInfo
from pipeline.core.image2d import match_channels
from pipeline.preprocessing.fingerprint import intensity_statistics
from pipeline.preprocessing.pictures import plan_picture_scale, scale_fingerprints
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.settings import MIN_STEPS, plan_settings, training_steps

logger = logging.getLogger(__name__)


def is_anisotropic(spacing: Sequence[float], threshold: float) -> bool:
    """The one anisotropy rule: the coarsest axis is more than ``threshold`` times the finest."""
    return float(np.max(spacing)) > threshold * float(np.min(spacing))


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
    if not is_anisotropic(target, anisotropy_threshold):
        return _rounded(target), None
    target[slow] = max(float(np.percentile(spacings[:, slow], percentile)), float(target[others].max()))
    return _rounded(target), slow


def _rounded(spacing: np.ndarray) -> tuple[float, float, float]:
    """Spacing to 6 significant digits (headers store float32: 2.98 comes as 2.9799999)."""
    return tuple(float(f"{s:.6g}") for s in spacing)  # type: ignore[return-value]


# Below this median share of the image kept by the body's crop box, z-scores are taken inside the body
# (nnU-Net's ``use_mask_for_norm`` rule: a brain MRI on a black background, not a CT or a chest X-ray).
BODY_MASK_FRACTION = 0.75


def body_fraction(fingerprints: pd.DataFrame) -> float:
    """The median share of an image's voxels inside its body crop box."""
    crop = np.prod([fingerprints[f"crop_shape_{i}"].to_numpy(float) for i in range(3)], axis=0)
    full = np.prod([fingerprints[f"ras_shape_{i}"].to_numpy(float) for i in range(3)], axis=0)
    return float(np.median(crop / np.maximum(full, 1.0)))


def plan_normalization(
    modalities: Mapping[int, str],
    n_channels: int,
    stats: Sequence[Mapping[str, float]],
    mode: str = "auto",
    ct_clip: Sequence[float] | None = None,
    ct_mean_std: Sequence[float] | None = None,
    inside_body: bool = False,
) -> tuple[dict, ...]:
    """Per-channel normalisation: ``auto`` picks ``ct`` for a channel whose modality is named CT, else ``zscore``
    (over the body only, 0 outside, when ``inside_body``); ``zscore_body`` z-scores every channel inside the body.

    ``ct``: clip to ``ct_clip`` (default: the foreground 0.5/99.5 percentiles), then z-score with
    ``ct_mean_std`` (default: mean/std of the clipped foreground samples, see :func:`intensity_statistics`).
    """
    out: list[dict] = []
    for c in range(n_channels):
        name = str(modalities.get(c, "")).strip().upper()
        scheme = ("ct" if name == "CT" else "zscore") if mode == "auto" else mode
        if scheme != "ct":
            body = scheme == "zscore_body" or (scheme == "zscore" and inside_body and mode == "auto")
            out.append({"scheme": "zscore", "body": True} if body else {"scheme": scheme})
            continue
        s = stats[c] if c < len(stats) else {}
        lo, hi = ct_clip if ct_clip else (s.get("p0.5", math.nan), s.get("p99.5", math.nan))
        mean, std = ct_mean_std if ct_mean_std else (s.get("clipped_mean", math.nan), s.get("clipped_std", math.nan))
        values = [float(v) for v in (lo, hi, mean, std)]
        if not all(np.isfinite(values)):
            raise ValueError(f"channel {c}: ct normalisation needs foreground intensities (or ct_clip and ct_mean_std)")
        out.append({"scheme": "ct", "clip": values[:2], "mean": values[2], "std": values[3]})
    return tuple(out)


def median_preprocessed_shape(
    fingerprints: pd.DataFrame, target_spacing: Sequence[float], crop_foreground: bool = True
) -> list[float]:
    """Median shape per RAS axis after cropping (if on) and resampling to ``target_spacing``."""
    prefix = "crop_shape" if crop_foreground else "ras_shape"
    return [
        float(np.median(fingerprints[f"{prefix}_{i}"] * fingerprints[f"ras_spacing_{i}"] / target_spacing[i]))
        for i in range(3)
    ]


def single_slice_axis(fingerprints: pd.DataFrame) -> int | None:
    """The RAS axis along which some case has only one slice (a 2D dataset), else None."""
    for i in range(3):
        if f"ras_shape_{i}" in fingerprints and (fingerprints[f"ras_shape_{i}"] <= 1).any():
            return i
    return None


def make_plan(
    info: DatasetInfo,
    fingerprints: pd.DataFrame,
    samples: Mapping[str, np.ndarray],
    cfg: PreprocessConfig,
    study: Config | None = None,
) -> Plan:
    """The plan from the fingerprint; every value set in ``cfg`` (and, for the training settings, in ``study``)
    wins over the planned one and is recorded as overridden."""
    study = dataclasses.replace(study or Config(), preprocess=cfg)
    single = single_slice_axis(fingerprints)
    reference, picture_scale = plan_picture_scale(info, fingerprints, single, cfg.picture_scale)
    fingerprints = scale_fingerprints(fingerprints, reference)  # lengths as the pictures will be preprocessed
    planned, slow = plan_spacing(fingerprints, cfg.anisotropy_threshold, cfg.anisotropic_percentile)
    if single is not None:  # a one-slice axis is never resampled (it would shrink to nothing)
        slow = None
    n_channels = _input_channels(info, fingerprints)
    samples = {k: match_channels(v, n_channels) if v.shape[0] != n_channels else v for k, v in samples.items()}
    spacing = _target_spacing(fingerprints, planned, single, cfg)
    stats = intensity_statistics(samples, cfg.ct_clip)
    kept = body_fraction(fingerprints) if cfg.crop_foreground else 1.0
    intensity = plan_normalization(
        info.modalities, n_channels, stats, cfg.normalization, cfg.ct_clip, cfg.ct_mean_std, kept < BODY_MASK_FRACTION
    )
    schemes = {c["scheme"] for c in intensity}
    normalization = schemes.pop() if len(schemes) == 1 else "mixed"

    def summary_at(target: Sequence[float]) -> dict:
        return _fingerprint_summary(fingerprints, planned, target, slow, single, stats, cfg, len(info.labels))

    spacing, coarser = coarsen_for_steps(summary_at, spacing, study)
    summary = summary_at(spacing)
    settings = {
        "picture_scale": picture_scale,
        **_preprocess_settings(spacing, intensity, slow, single, cfg, coarser, kept),
        **plan_settings(summary, spacing, study),
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
        fingerprint=summary,
        label_values=tuple(info.label_values),
        single_axis=single,
        settings=settings,
        picture_reference=reference,
    )
    logger.info("plan: %s", {k: v["value"] for k, v in settings.items() if k in ("dims", "patch_size", "epochs")})
    return plan


def _input_channels(info: DatasetInfo, fingerprints: pd.DataFrame) -> int:
    """The dataset's input channels: as declared, else the most any image has."""
    if info.modalities_declared:  # 2D pictures of a grey dataset stored as RGB become grey, and back
        return len(info.modalities)
    return int(fingerprints["channels"].max()) if "channels" in fingerprints else max(len(info.modalities), 1)


def _ras_spacings(fingerprints: pd.DataFrame) -> np.ndarray:
    """Every case's spacing per RAS axis, ``(cases, 3)``."""
    return fingerprints[[f"ras_spacing_{i}" for i in range(3)]].to_numpy(float)


def _target_spacing(
    fingerprints: pd.DataFrame, planned: Sequence[float], single: int | None, cfg: PreprocessConfig
) -> tuple[float, float, float]:
    """The configured spacing, else the planned one; a one-slice axis keeps its median spacing."""
    spacing = list(cfg.target_spacing) if cfg.target_spacing else list(planned)
    if single is not None:
        median = float(np.median(_ras_spacings(fingerprints), axis=0)[single])
        if cfg.target_spacing and spacing[single] != median:
            logger.warning("target_spacing along axis %d ignored: one slice, not resampled", single)
        spacing[single] = median
    return _rounded(np.asarray(spacing, dtype=float))


def _fingerprint_summary(
    fingerprints: pd.DataFrame,
    planned: Sequence[float],
    spacing: Sequence[float],
    slow: int | None,
    single: int | None,
    stats: list[dict[str, float]],
    cfg: PreprocessConfig,
    n_classes: int,
) -> dict:
    """The dataset in numbers, as the plan records it (``Plan.fingerprint``) and the settings read it;
    ``n_classes``: the classes a network outputs, background included."""
    ras_spacing = _ras_spacings(fingerprints)
    median = median_preprocessed_shape(fingerprints, spacing, cfg.crop_foreground)
    prefix = "crop_shape" if cfg.crop_foreground else "ras_shape"
    voxels = np.prod([fingerprints[f"{prefix}_{i}"] * ras_spacing[:, i] / spacing[i] for i in range(3)], axis=0)
    return {
        "n_cases": int(len(fingerprints)),
        "n_classes": int(n_classes),
        "median_spacing": [float(v) for v in np.median(ras_spacing, axis=0)],
        "min_spacing": [float(v) for v in ras_spacing.min(axis=0)],
        "max_spacing": [float(v) for v in ras_spacing.max(axis=0)],
        "planned_spacing": list(planned),
        "anisotropic": slow is not None,
        "slow_axis": slow,
        "single_axis": single,
        "anisotropy_threshold": cfg.anisotropy_threshold,
        "median_preprocessed_shape": [round(v, 2) for v in median],
        "dataset_voxels": float(np.sum(voxels)),
        "thickness_mm": _median_thickness(fingerprints),
        "thinnest_mm": _thinnest(fingerprints),
        "class_order": class_order(fingerprints),
        "memory_budget_gb": cfg.memory_budget_gb,
        "intensity": stats,
    }


def _preprocess_settings(
    spacing: Sequence[float],
    intensity: list[dict],
    slow: int | None,
    single: int | None,
    cfg: PreprocessConfig,
    coarser: str = "",
    kept: float = 1.0,
) -> dict[str, dict]:
    """The target spacing and normalisation settings, each with its source and reason (``kept``: the median
    share of an image inside its body crop box)."""
    body = any(c.get("body") for c in intensity)
    box = f"the body's crop box keeps {kept:.0%} of the median image"
    where = f"inside the body, 0 outside ({box}, < {BODY_MASK_FRACTION:.0%})" if body else f"over the image ({box})"
    return {
        "target_spacing": {
            "value": list(spacing),
            "source": "overridden" if cfg.target_spacing else "planned",
            "reason": "set in the config" if cfg.target_spacing else coarser or _spacing_reason(slow, single, cfg),
        },
        "normalization": {
            "value": [c["scheme"] + ("_body" if c.get("body") else "") for c in intensity],
            "source": "planned" if cfg.normalization == "auto" else "overridden",
            "reason": f"per channel: CT -> dataset clip + z-score, else per-image z-score {where}"
            if cfg.normalization == "auto"
            else "set in the config",
        },
    }


def _class_thickness(fingerprints: pd.DataFrame) -> list[float]:
    """Each foreground class's median thickness over the cases (mm)."""
    columns = [c for c in fingerprints if str(c).startswith("thickness_mm_") and fingerprints[c].notna().any()]
    return [float(np.nanmedian(fingerprints[c].to_numpy(float))) for c in columns]


def _median_thickness(fingerprints: pd.DataFrame) -> float | None:
    """The typical structure's thickness (mm): the median over classes; None without foreground."""
    per_class = _class_thickness(fingerprints)
    return round(float(np.median(per_class)), 4) if per_class else None


def _thinnest(fingerprints: pd.DataFrame) -> float | None:
    """The thinnest class's thickness (mm); None without foreground."""
    per_class = _class_thickness(fingerprints)
    return round(min(per_class), 4) if per_class else None


COARSENING = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # factors tried on the spacing across the slices, smallest first
COARSE_MIN_VOXELS = 20.0  # the thinnest class keeps this many voxels: a voxel of boundary error costs <= ~10% Dice


def coarsen_for_steps(
    summary_at: Callable[[Sequence[float]], dict], spacing: Sequence[float], study: Config
) -> tuple[tuple[float, float, float], str]:
    """The target spacing coarsened (across the slices: every axis of a 3D plan, the in-plane axes of a 2D
    one) by the smallest factor of ``COARSENING`` at which the budget buys ``MIN_STEPS`` training steps
    without cropping the patch, while the thinnest class stays ``COARSE_MIN_VOXELS`` voxels thick (else the
    largest such factor). Returns the spacing and its reason ("" when unchanged): unchanged when the plan
    already has the steps, or the config sets the spacing, the patch or the epochs.

    ``summary_at(spacing)`` is the plan's dataset summary at a candidate spacing.
    """
    if study.preprocess.target_spacing or study.sample.patch_size is not None or study.train.epochs is not None:
        return tuple(spacing), ""  # type: ignore[return-value]
    base = summary_at(spacing)
    settings = plan_settings(base, spacing, study, crop=False)
    first, thinnest = training_steps(settings), base.get("thinnest_mm")
    if first >= MIN_STEPS or not thinnest:
        return tuple(spacing), ""  # type: ignore[return-value]
    dims, axis = settings["dims"]["value"], settings["slice_axis"]["value"]
    axes = [a for a in range(3) if dims == 3 or a != axis]
    chosen = None
    for factor in COARSENING:
        target = _rounded(np.array([s * factor if a in axes else s for a, s in enumerate(spacing)]))
        voxels = thinnest / min(target[a] for a in axes)
        if voxels < COARSE_MIN_VOXELS:
            break
        steps = training_steps(plan_settings(summary_at(target), target, study, crop=False))
        chosen = (target, factor, steps, voxels)
        if steps >= MIN_STEPS:
            break
    if chosen is None:
        return tuple(spacing), ""  # type: ignore[return-value]
    target, factor, steps, voxels = chosen
    return target, (
        f"median spacing x{factor:g} across the slices: at the median the budget buys {first} training steps "
        f"(< {MIN_STEPS}), at x{factor:g} {steps}; the thinnest class is still {voxels:.0f} voxels thick "
        f"(>= {COARSE_MIN_VOXELS:g})"
    )


ORDER_CONSISTENCY = 0.9  # share of cases in which one class lies on the same side of another
ORDER_SEPARATION = 0.2  # median centroid distance along the axis, as a share of the foreground's extent
ORDER_MIN_CASES = 3


def class_order(fingerprints: pd.DataFrame) -> list[dict]:
    """Pairs of classes that lie in a fixed order along a RAS axis (the anterior and posterior hippocampus along
    posterior-anterior): in at least ``ORDER_CONSISTENCY`` of the cases holding both, one class's centroid is on
    the same side of the other's, ``ORDER_SEPARATION`` of the foreground's extent apart or more (median).
    Flipping that axis would swap what tells the two classes apart, so the plan does not flip it."""
    out = []
    for axis in range(3):
        extent = f"ras_extent_{axis}"
        if extent not in fingerprints:
            continue
        prefix, suffix = "ras_centroid_", f"_{axis}"
        columns = [c for c in fingerprints if c.startswith(prefix) and c.endswith(suffix)]
        classes = sorted(int(c[len(prefix) : -len(suffix)]) for c in columns)
        for i, a in enumerate(classes):
            for b in classes[i + 1 :]:
                both = fingerprints[[f"{prefix}{a}{suffix}", f"{prefix}{b}{suffix}", extent]].dropna().to_numpy(float)
                if len(both) < ORDER_MIN_CASES:
                    continue
                rel = (both[:, 1] - both[:, 0]) / np.maximum(both[:, 2], 1e-6)
                same = max(float(np.mean(rel > 0)), float(np.mean(rel < 0)))
                separation = float(np.median(rel))
                if same >= ORDER_CONSISTENCY and abs(separation) >= ORDER_SEPARATION:
                    out.append(
                        {
                            "axis": axis,
                            "classes": [a, b],
                            "consistency": round(same, 3),
                            "separation": round(separation, 3),
                        }
                    )
    return out


def _spacing_reason(slow: int | None, single: int | None, cfg: PreprocessConfig) -> str:
    if single is not None:
        return f"median spacing; axis {single} has one slice and is not resampled"
    if slow is not None:
        return (
            f"median spacing; anisotropic (> {cfg.anisotropy_threshold:g}x): axis {slow} at its "
            f"{cfg.anisotropic_percentile:g}th percentile"
        )
    return "median spacing per axis"
