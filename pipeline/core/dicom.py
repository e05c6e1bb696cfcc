"""A DICOM series as a volume: the chosen series (see :mod:`pipeline.core.dicom_series`) -> the same
``(array, Header)`` as any file.

Voxels are read with SimpleITK's ``ImageSeriesReader`` (GDCM: compressed transfer syntaxes, rescale
slope/intercept applied) on the slices in the order computed here. The geometry comes from the slices'
``ImagePositionPatient`` / ``ImageOrientationPatient`` / ``PixelSpacing`` alone and is checked first: what
cannot be one volume is a :class:`~pipeline.core.dicom_series.DicomError` (a :class:`ReadError`, one line)
naming the folder: mixed series (orientation, matrix size or pixel spacing differ), missing or duplicate
slices, uneven slice spacing, gantry tilt (slices sheared along the stack; not resampled), multi-frame or
colour images, a single slice. Axes are ``x`` = column, ``y`` = row, ``z`` = slice (sorted along the slice
normal ``row x column``), and the affine maps them to RAS millimetres like every other reader's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.config import DicomConfig
from pipeline.core.dicom_series import DicomError, Series, choose_series, error_line, scan_folder, series_rule
from pipeline.core.readers import Header
from pipeline.core.readers.itk import sitk_affine, sitk_to_xyz

logger = logging.getLogger(__name__)

#: relative tolerance on slice steps (a step off the median by more than this is uneven)
STEP_RTOL = 0.01
#: in-plane drift of slice positions along the stack (mm) above which the stack counts as tilted
TILT_ATOL = 0.01
#: tolerance on direction cosines and pixel spacing when checking that slices belong together
GEOMETRY_ATOL = 1e-4


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Volume:
    """A checked series: its slices in stacking order and the geometry they define (ITK/LPS terms)."""

    series: Series
    files: tuple[Path, ...]  # sorted along the slice normal
    headers: tuple[Any, ...]  # same order
    spacing: tuple[float, float, float]  # column, row, slice step (mm)
    direction: np.ndarray  # 3x3, columns: row direction, column direction, slice normal (LPS)
    origin: np.ndarray  # position of the first voxel (LPS mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.headers[0].Columns), int(self.headers[0].Rows), len(self.files)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index -> RAS world (mm)."""
        return sitk_affine(self.direction.ravel(), self.spacing, self.origin)


def _floats(ds: Any, keyword: str, n: int, name: str) -> np.ndarray:
    value = getattr(ds, keyword, None)
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([])
    if values.size != n or not np.all(np.isfinite(values)):
        raise DicomError(f"{name}: missing or invalid {keyword}")
    return values


def _check_slices(series: Series) -> None:
    """Slices that could be one stack: single-frame, greyscale, same matrix, orientation and pixel spacing."""
    first = series.headers[0]
    for path, ds in zip(series.files, series.headers, strict=True):
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DicomError(f"{path.name}: multi-frame DICOM images are not supported (one file per slice expected)")
        if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
            raise DicomError(f"{path.name}: colour images ({ds.SamplesPerPixel} samples per pixel) are not supported")
        for keyword in ("Rows", "Columns"):
            if getattr(ds, keyword, None) != getattr(first, keyword, None):
                raise DicomError(
                    f"mixed series: {keyword} {getattr(first, keyword, None)} in {series.files[0].name} "
                    f"but {getattr(ds, keyword, None)} in {path.name}"
                )
        for keyword, n in (("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
            a, b = _floats(first, keyword, n, series.files[0].name), _floats(ds, keyword, n, path.name)
            if not np.allclose(a, b, atol=GEOMETRY_ATOL):
                raise DicomError(f"mixed series: {keyword} differs between {series.files[0].name} and {path.name}")


def _check_steps(files: Sequence[Path], along: np.ndarray) -> float:
    """The slice step; refuse duplicate or missing slices and uneven spacing (``along``: sorted positions)."""
    steps = np.diff(along)
    step = float(np.median(steps))
    tol = max(STEP_RTOL * abs(step), 1e-3)
    for i, s in enumerate(steps):
        if s < tol:
            raise DicomError(
                f"duplicate slices: {files[i].name} and {files[i + 1].name} are both at {along[i]:.4g} mm "
                "along the stack"
            )
    if abs(steps - step).max() > tol:
        i = int(np.argmax(abs(steps - step)))
        ratio = steps[i] / step
        if abs(ratio - round(ratio)) * step <= tol and round(ratio) >= 2:
            raise DicomError(
                f"missing slice(s): {round(ratio) - 1} between {files[i].name} and {files[i + 1].name} "
                f"(gap {steps[i]:.4g} mm where the slice spacing is {step:.4g} mm)"
            )
        raise DicomError(f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm")
    return step


def _check_tilt(positions: np.ndarray, along: np.ndarray, normal: np.ndarray) -> None:
    """Refuse slice positions that drift in-plane along the stack (gantry tilt, sheared stacks)."""
    drift = (positions - positions[0]) - np.outer(along - along[0], normal)
    if np.abs(drift).max() > TILT_ATOL:
        span = float(along[-1] - along[0])
        shift = float(np.linalg.norm(drift[-1]))
        angle = float(np.degrees(np.arctan2(shift, span)))
        raise DicomError(
            f"gantry tilt or sheared stack: slice positions drift {shift:.3g} mm in-plane over {span:.4g} mm "
            f"({angle:.2f} degrees); resample the series to an orthogonal grid first"
        )


def volume_of(series: Series) -> Volume:
    """Sort the slices along their normal and check that they form one evenly spaced, untilted stack."""
    if len(series.files) < 2:
        raise DicomError(f"a single slice ({series.files[0].name}) is not a volume")
    _check_slices(series)
    first = series.headers[0]
    iop = _floats(first, "ImageOrientationPatient", 6, series.files[0].name)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    positions = np.stack(
        [_floats(d, "ImagePositionPatient", 3, p.name) for p, d in zip(series.files, series.headers, strict=True)]
    )
    order = np.argsort(positions @ normal, kind="stable")
    files = tuple(series.files[i] for i in order)
    positions = positions[order]
    along = positions @ normal
    step = _check_steps(files, along)
    _check_tilt(positions, along, normal)
    spacing = _floats(first, "PixelSpacing", 2, series.files[0].name)  # (row spacing, column spacing)
    if min(spacing) <= 0:
        raise DicomError(f"zero or negative PixelSpacing {tuple(spacing)} in {series.files[0].name}")
    headers = tuple(series.headers[i] for i in order)
    direction = np.column_stack([row, col, normal])
    return Volume(series, files, headers, (float(spacing[1]), float(spacing[0]), step), direction, positions[0])


def read_volume(folder: str | Path, rule: DicomConfig | None = None) -> Volume:
    """The checked series of a DICOM folder chosen by ``rule`` (default: the process's :func:`series_rule`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError("not a folder")
    return volume_of(choose_series(scan_folder(folder), rule or series_rule()))


# ----------------------------------------------------------------------------------------------- reading


def _dtype(ds: Any) -> str:
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != int(slope) or intercept != int(intercept):
        return "float32"
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    return f"{'int' if signed else 'uint'}{int(getattr(ds, 'BitsAllocated', 16) or 16)}"


def header_of(volume: Volume) -> Header:
    return Header(volume.shape, tuple(volume.spacing), volume.affine, _dtype(volume.headers[0]))


def read_header(folder: str | Path, rule: DicomConfig | None = None) -> Header:
    """Geometry of a DICOM folder's series (headers only)."""
    return header_of(read_volume(folder, rule))


def image_of(volume: Volume) -> sitk.Image:
    """The voxels of a checked series as a SimpleITK image with the geometry computed here."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in volume.files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise DicomError(f"cannot read the pixel data: {error_line(err)}") from None
    if tuple(image.GetSize()) != volume.shape or image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomError(f"pixel data of size {image.GetSize()} do not match the headers ({volume.shape})")
    image.SetSpacing(volume.spacing)
    image.SetOrigin(tuple(float(v) for v in volume.origin))
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return image


def read_image(folder: str | Path, rule: DicomConfig | None = None) -> sitk.Image:
    """The series of a DICOM folder as a SimpleITK image (LPS geometry)."""
    return image_of(read_volume(folder, rule))


def read_array(folder: str | Path, rule: DicomConfig | None = None) -> tuple[np.ndarray, Header]:
    """Voxels in ``(x, y, z)`` = (column, row, slice) order and the header, as every reader returns them."""
    volume = read_volume(folder, rule)
    image = image_of(volume)
    logger.debug("%s: series %s, %s voxels", folder, volume.series.describe(), "x".join(map(str, volume.shape)))
    return sitk_to_xyz(image), header_of(volume)
