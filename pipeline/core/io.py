"""File I/O that keeps geometry intact and never leaves half-written files."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


class UnsafePathError(ValueError):
    """A file name taken from the data (case id, label name) would leave its output folder."""


_SEPARATORS = ("/", "\\", "\0")


def inside(root: str | Path, *parts: str) -> Path:
    """``root / part / part ...``, refusing any part that is not one plain file or folder name.

    Every path the pipeline writes whose name comes from the data (case ids, label names) is built here,
    so ``../x``, ``/etc/x``, ``a/b``, ``.hidden`` or an empty name can never place a file outside ``root``
    (or as a hidden temporary-looking file inside it). Raises :class:`UnsafePathError` naming the part.
    """
    root = Path(root)
    for part in parts:
        name = str(part)
        if not name or name.startswith(".") or any(sep in name for sep in _SEPARATORS):
            raise UnsafePathError(f"{name!r}: not a plain file name, refusing to write it under {root}")
    out = root.joinpath(*parts)
    base = os.path.normpath(os.path.abspath(root))
    if os.path.commonpath([base, os.path.normpath(os.path.abspath(out))]) != base:  # belt and braces
        raise UnsafePathError(f"{out}: outside {root}")
    return out


def _create_beside(path: Path) -> Path:
    """Create an empty hidden file beside ``path`` with the mode any new file gets (0666 minus the umask)."""
    suffix = "".join(path.suffixes)  # keep ".nii.gz", ".npy" so writers that infer the format from it work
    stem = path.name.split(".")[0]
    while True:
        tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if not directory:
            raise
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The file follows the umask like any other new file, and file and folder are fsynced, so after a
    crash ``path`` holds either the old or the new content, never part of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(path)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent, directory=True)
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


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda p: p.write_bytes(data))


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


def like(array: np.ndarray, reference: nib.Nifti1Image, dtype: Any = np.uint8) -> nib.Nifti1Image:
    """``array`` as a NIfTI image on ``reference``'s voxel grid, carrying its geometry and nothing else.

    A fresh header gets the reference's sform and qform with their codes and its spatial units; free
    text and patient data of the scan's header (``descrip``, ``aux_file``, ``db_name``, ``intent_name``,
    extensions) are never copied into what the pipeline writes.
    """
    array = np.asarray(array)
    if tuple(array.shape[:3]) != tuple(reference.shape[:3]):
        raise ValueError(f"array shape {array.shape} does not match reference {reference.shape}")
    img = nib.Nifti1Image(array.astype(dtype, copy=False), reference.affine)
    img.header.set_data_dtype(dtype)
    sform, scode = reference.header.get_sform(coded=True)
    qform, qcode = reference.header.get_qform(coded=True)
    img.set_sform(sform if sform is not None else reference.affine, int(scode))
    img.set_qform(qform if qform is not None else reference.affine, int(qcode))
    img.header.set_xyzt_units(xyz=reference.header.get_xyzt_units()[0])
    return img


def save_like(array: np.ndarray, reference: nib.Nifti1Image, path: str | Path, dtype: Any = np.uint8) -> Path:
    """Save ``array`` as NIfTI on exactly ``reference``'s voxel grid (geometry only, see :func:`like`)."""
    try:
        img = like(array, reference, dtype)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return write_atomic(path, lambda p: nib.save(img, str(p)))
