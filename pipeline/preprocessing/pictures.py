"""2D pictures without a physical spacing (PNG, JPEG, ...): one size for every picture, when the data say so.

A picture's pixel carries no size: a chest X-ray 255 pixels wide and one 3,670 wide show the same chest.
Read at 1 "mm" per pixel, the lungs of the two differ 14-fold in pixels, and no network sees them alike.
When the foreground's extent grows with the picture's size (its extent *relative to the picture* varies at
most ``SCALE_RATIO`` as much as its extent in pixels), the plan gives each picture the pixel size that
brings it to the median picture's size: ``sqrt(W_ref * H_ref / (W * H))`` along both in-plane axes (one
factor, so aspect ratios are kept), applied to the picture's affine before resampling
(:class:`pipeline.preprocessing.transforms.ScalePictured`), so predictions go back to each picture's own
pixels the one usual way. Pictures of one size, or whose structures keep their size in pixels (tiles of one
microscope), are left as they are. Knob: ``preprocess.picture_scale`` (null: planned).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.core.cases import DatasetInfo
from pipeline.core.readers import IMAGE2D_SUFFIXES
from pipeline.preprocessing.settings import entry

logger = logging.getLogger(__name__)

SCALE_RATIO = 0.5  # relative extent's variation (CV) at most this share of the extent's variation in pixels
MIN_SIZE_CV = 0.1  # pictures whose sizes vary less than this (CV of sqrt(W * H)) are one size already


def all_pictures(info: DatasetInfo) -> bool:
    """Every case's image is a 2D picture (by its file suffix)."""
    return bool(info.cases) and all(
        any(str(image).lower().endswith(s) for s in IMAGE2D_SUFFIXES) for c in info.cases for image in c.images
    )


def _cv(values: np.ndarray) -> float:
    """Coefficient of variation of the positive values (a picture without foreground has no extent)."""
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.std(values) / np.mean(values)) if len(values) > 1 and np.mean(values) > 0 else 0.0


def _sizes(fingerprints: pd.DataFrame, axes: Sequence[int], prefix: str) -> np.ndarray:
    """Per case, the geometric mean over ``axes`` of the ``prefix`` columns (picture size or foreground extent)."""
    return np.sqrt(np.prod([fingerprints[f"{prefix}_{a}"].to_numpy(float) for a in axes], axis=0))


def plan_picture_scale(
    info: DatasetInfo, fingerprints: pd.DataFrame, single: int | None, override: bool | None
) -> tuple[tuple[int, int, int] | None, dict]:
    """The reference picture shape every picture is brought to (None: pictures kept as they are) and the
    ``picture_scale`` setting (value, source, reason)."""
    if not all_pictures(info) or single is None:
        if override:
            logger.warning("preprocess.picture_scale ignored: the images are not all 2D pictures")
        return None, entry(False, None, "not 2D pictures: scans keep their physical spacing")
    axes = [a for a in range(3) if a != single]
    size = _sizes(fingerprints, axes, "ras_shape")
    reference = tuple(1 if a == single else int(np.median(fingerprints[f"ras_shape_{a}"])) for a in range(3))
    if override is not None:
        return (reference if override else None), entry(override, override, "")  # type: ignore[return-value]
    if "ras_extent_0" not in fingerprints or _cv(size) < MIN_SIZE_CV:
        return None, entry(False, None, f"pictures of about one size (size CV {_cv(size):.2f} < {MIN_SIZE_CV:g})")
    extent = _sizes(fingerprints, axes, "ras_extent")
    absolute, relative = _cv(extent), _cv(extent / size)
    numbers = f"foreground extent CV {absolute:.2f} in pixels, {relative:.2f} relative to the picture"
    if relative > SCALE_RATIO * absolute:
        return None, entry(False, None, f"structures keep their size in pixels ({numbers})")
    shape = "x".join(str(reference[a]) for a in axes)
    why = f"structures grow with the picture ({numbers}): every picture brought to the median {shape}"
    return reference, entry(True, None, why)  # type: ignore[return-value]


def picture_factor(shape: Sequence[int], reference: Sequence[int]) -> float:
    """The pixel size that brings a picture of ``shape`` (3 spatial axes) to ``reference``'s size at a spacing
    of 1: ``sqrt(W_ref * H_ref / (W * H))`` (a picture twice the reference's width and height: 0.5)."""
    axes = [a for a in range(3) if reference[a] > 1]
    return math.sqrt(math.prod(int(reference[a]) for a in axes) / math.prod(int(shape[a]) for a in axes))


SCALED_PREFIXES = ("ras_spacing_", "ras_extent_", "ras_centroid_")


def scale_fingerprints(fingerprints: pd.DataFrame, reference: Sequence[int] | None) -> pd.DataFrame:
    """The fingerprint as the pictures will be preprocessed: in-plane lengths (spacing, extent, centroids,
    thickness) times each picture's :func:`picture_factor`. Unchanged without a reference."""
    if reference is None:
        return fingerprints
    out = fingerprints.copy()
    shape = fingerprints[[f"ras_shape_{a}" for a in range(3)]].to_numpy(int)
    factor = np.array([picture_factor(s, reference) for s in shape])
    axes = [a for a in range(3) if reference[a] > 1]
    for column in out.columns:
        name = str(column)
        in_plane = any(name.startswith(p) and int(name.rsplit("_", 1)[1]) in axes for p in SCALED_PREFIXES)
        if in_plane or name.startswith("thickness_mm_"):
            out[column] = out[column].to_numpy(float) * factor
    return out
