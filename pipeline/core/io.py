"""File I/O that keeps geometry intact and never leaves half-written files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the suffixes (".nii.gz", ".npy") so writers that infer the format from the name work
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (sorted keys, NaN written as null)."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda p: p.write_text(text))


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    return write_atomic(path, lambda p: np.save(p, array, allow_pickle=False))


def write_csv(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return write_atomic(path, lambda p: frame.to_csv(p, index=False))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if not np.isfinite(value) else value
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_like(array: np.ndarray, reference: nib.Nifti1Image, path: str | Path, dtype: Any = np.uint8) -> Path:
    """Save ``array`` as NIfTI on exactly ``reference``'s voxel grid.

    The header is copied from the reference so sform and qform, with their codes, are those of the
    scan; data type and scaling are reset for the new content.
    """
    if tuple(array.shape[:3]) != tuple(reference.shape[:3]):
        raise ValueError(f"{path}: array shape {array.shape} does not match reference {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), reference.affine, header=header)
    sform, scode = reference.header.get_sform(coded=True)
    qform, qcode = reference.header.get_qform(coded=True)
    img.set_sform(sform if sform is not None else reference.affine, int(scode))
    img.set_qform(qform if qform is not None else reference.affine, int(qcode))
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    return write_atomic(path, lambda p: nib.save(img, str(p)))
