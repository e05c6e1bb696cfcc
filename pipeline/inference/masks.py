"""Write a predicted label map as the user's data came: declared label values, the scan's format family.

* the classes 0..K-1 the network predicts are written back with the values the dataset declares
  (:func:`pipeline.core.labels.to_values`: a 0/255 binary mask stays 0/255, BraTS keeps 0/1/2/4);
* a 2D picture (PNG, JPEG, TIFF, BMP, GIF) gets ``<case>.png`` of the picture's own size; a volume gets
  ``<case>.nii.gz`` on the scan's voxel grid with its header (:func:`pipeline.core.io.save_like`).

Used by ``pipeline.tools.predict`` and the evaluate stage, so both write the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core import io
from pipeline.core.image2d import is_image2d, write_mask_2d
from pipeline.core.labels import to_values


def mask_name(case_id: str, image: str | Path) -> str:
    """``<case>.png`` for a 2D picture, ``<case>.nii.gz`` for a volume."""
    return f"{case_id}.png" if is_image2d(image) else f"{case_id}.nii.gz"


def save_mask(
    classes: np.ndarray,
    reference: nib.Nifti1Image,
    image: str | Path,
    out_dir: str | Path,
    case_id: str,
    label_values: Sequence[float] = (),
) -> Path:
    """Write one prediction (classes on the scan's grid) into ``out_dir``; returns the file written."""
    path = io.inside(out_dir, mask_name(case_id, image))
    values = to_values(np.asarray(classes), label_values)
    if is_image2d(image):
        return write_mask_2d(values, path)
    dtype = values.dtype if values.dtype != np.int64 else np.int32
    return io.save_like(values, reference, path, dtype=dtype)
