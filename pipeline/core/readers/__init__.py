"""THE reader: every path that reads a scan or label (validation, fingerprint, preprocessing through MONAI's
``LoadImaged``, inference, evaluation, the MLflow model) goes through :func:`read_header` /
:func:`read_array`, so every check below applies everywhere.

* :func:`read_array` returns the voxel array in ``(x, y, z[, c])`` order (scaling applied) and a
  :class:`Header` whose affine maps voxel indices to RAS world millimetres, for every format.
  :func:`read_scan` reads the channels of one case (one 4D file or one file per channel) as ``(C, x, y, z)``.
* Any failure (missing, empty, truncated, corrupt file, header naming a data file outside the scan's folder,
  declared size over the voxel limit or beyond what the file holds, ...) is a :class:`ReadError` with a
  one-line message, raised before the voxel data are allocated.
* Formats are a small registry of :class:`Backend` s: file suffixes (or a folder predicate, for formats
  stored as a folder of files) -> ``read_header(path) -> Header`` and ``read_array(path) -> (array,
  Header)``. NIfTI: :mod:`.nifti` (nibabel's header parser, our bounded data read); NRRD/MetaImage:
  :mod:`.itk` (SimpleITK after our own header checks); 2D pictures: :mod:`pipeline.core.image2d`; DICOM
  series folders: :mod:`pipeline.core.dicom` (folder predicate: :mod:`pipeline.core.dicom_series`; size
  checked from the headers). To add a format, write a module with those two functions and add one
  :func:`register` call at the end of this file; :data:`SUPPORTED_SUFFIXES` (the one suffix list), dataset
  discovery, ``validate``, ``predict`` and MONAI's loader then all know it.
* ``PipelineReader`` (:mod:`.monai_reader`) is the MONAI ``ImageReader`` on top of :func:`read_array`, built on
  first access so that validation does not pay for importing MONAI (and torch).
* The voxel limit per file (:func:`set_max_voxels`, config ``data.max_voxels``, ``predict --max-voxels``)
  bounds the memory a header can claim; gzip data are inflated in chunks into a buffer of the declared size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.readers import itk, nifti
from pipeline.core.readers.base import (
    DEFAULT_MAX_VOXELS,
    Header,
    ReadError,
    add_max_voxels_argument,
    max_voxels,
    set_max_voxels,
)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "add_max_voxels_argument",
    "IMAGE2D_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "Backend",
    "Header",
    "ReadError",
    "backend_for",
    "is_image_file",
    "max_voxels",
    "read_array",
    "read_header",
    "read_scan",
    "register",
    "set_max_voxels",
    "strip_suffix",
    "suffix_of",
]


@dataclass(frozen=True)
class Backend:
    """One file format: how to recognise it and how to read it."""

    name: str
    suffixes: tuple[str, ...]  # lower case, with the dot (".nii.gz" counts as one suffix)
    read_header: Callable[[Path], Header]
    read_array: Callable[[Path], tuple[np.ndarray, Header]]
    is_folder: Callable[[Path], bool] | None = None  # formats stored as a folder (e.g. a DICOM series)


#: 2D pictures, read by :mod:`pipeline.core.image2d` as one-slice volumes
IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_BACKENDS: list[Backend] = []
SUPPORTED_SUFFIXES: tuple[str, ...] = ()


def register(backend: Backend) -> None:
    """Add a format; its suffixes join :data:`SUPPORTED_SUFFIXES` (longest suffixes are matched first)."""
    global SUPPORTED_SUFFIXES
    _BACKENDS.append(backend)
    suffixes = {s for b in _BACKENDS for s in b.suffixes}
    SUPPORTED_SUFFIXES = tuple(sorted(suffixes, key=lambda s: (-len(s), s)))


def suffix_of(path: str | Path) -> str:
    """The format suffix (``.nii.gz`` counts as one), lower case."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def strip_suffix(name: str) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def backend_for(path: str | Path) -> Backend | None:
    """The backend that reads ``path`` (by folder predicate for folders, else by suffix), or None."""
    path = Path(path)
    if path.is_dir():
        return next((b for b in _BACKENDS if b.is_folder is not None and b.is_folder(path)), None)
    suffix = suffix_of(path)
    return next((b for b in _BACKENDS if suffix in b.suffixes), None)


def is_image_file(path: str | Path) -> bool:
    """A scan by its name (or a folder a backend recognises); hidden files (``.x.tmp.nii.gz``) are not."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    if suffix_of(path) in SUPPORTED_SUFFIXES:
        return True  # by its name, whatever it is (a folder or device named so is reported when read)
    return path.is_dir() and backend_for(path) is not None


def _backend(path: Path) -> Backend:
    if not path.exists():
        raise ReadError("file not found")
    backend = backend_for(path)
    if path.is_dir():
        if backend is None:
            raise ReadError("not a regular file")
        return backend
    if not path.is_file():
        raise ReadError("not a regular file")
    if backend is None:
        raise ReadError(f"unsupported file type {suffix_of(path)!r} (expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise ReadError("empty file (0 bytes)")
    return backend


def read_header(path: str | Path) -> Header:
    """Header geometry of any supported file (the whole file is checked, nothing large is allocated)."""
    path = Path(path)
    return _backend(path).read_header(path)


def read_array(path: str | Path) -> tuple[np.ndarray, Header]:
    """Voxel array in ``(x, y, z[, c])`` order (scaling applied) and the header of any supported file."""
    path = Path(path)
    return _backend(path).read_array(path)


def read_scan(paths: Sequence[str | Path]) -> tuple[np.ndarray, Header]:
    """The channels of one scan as ``(C, x, y, z)`` float32 and the first file's header.

    ``paths`` is one file (3D, or 4D with channels last) or one 3D/4D file per channel; every file must be
    on the first one's voxel grid. Raises :class:`ReadError` naming the offending file.
    """
    arrays, first = [], None
    for path in paths:
        try:
            data, header = read_array(path)
        except ReadError as err:
            raise ReadError(f"{path}: {err}") from None
        if data.ndim not in (3, 4):
            raise ReadError(f"{path}: expected a 3D volume (or 4D multi-channel), got {data.ndim}D")
        if first is None:
            first = header
        elif tuple(data.shape[:3]) != tuple(first.shape[:3]) or not np.allclose(header.affine, first.affine, atol=1e-3):
            raise ReadError(f"{path}: channel file is not on the first channel's voxel grid")
        data = np.asarray(data, dtype=np.float32)
        arrays.extend([data] if data.ndim == 3 else list(np.moveaxis(data, -1, 0)))
    if first is None:
        raise ReadError("no image files")
    return np.stack(arrays), first


def __getattr__(name: str) -> Any:
    """``PipelineReader`` (a MONAI ``ImageReader``), imported on first use."""
    if name == "PipelineReader":
        from pipeline.core.readers.monai_reader import PipelineReader

        return PipelineReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register(Backend("nifti", nifti.SUFFIXES, nifti.read_header, nifti.read_array))
register(Backend("itk", itk.SUFFIXES, itk.read_header, itk.read_array))


def _dicom_array(path: Path) -> tuple[np.ndarray, Header]:
    """A DICOM series folder: headers first (their size checked against the voxel limit), then the voxels."""
    from pipeline.core import dicom  # imported on first use: it builds on this module
    from pipeline.core.readers.base import check_declared
    from pipeline.core.readers.itk import sitk_to_xyz

    volume = dicom.read_volume(path)
    check_declared(volume.shape, 1)
    return sitk_to_xyz(dicom.image_of(volume)), dicom.header_of(volume)


def _dicom_header(path: Path) -> Header:
    from pipeline.core import dicom
    from pipeline.core.readers.base import check_declared

    header = dicom.read_header(path)
    check_declared(header.shape, 1)
    return header


def _is_dicom_folder(path: Path) -> bool:
    from pipeline.core import dicom_series

    return dicom_series.is_dicom_folder(path)


register(Backend("dicom", (), _dicom_header, _dicom_array, is_folder=_is_dicom_folder))


def _image2d() -> Any:
    from pipeline.core import image2d  # imported on first use: it builds on this module

    return image2d


register(
    Backend(
        "image2d",
        IMAGE2D_SUFFIXES,
        lambda path: _image2d().read_header_2d(path),
        lambda path: _image2d().read_array_2d(path),
    )
)
