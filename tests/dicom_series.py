"""Test helper: write a volume as a DICOM series with SimpleITK's writer (one file per slice).

Follows SimpleITK's "DICOM series from array" example: shared study/series/frame-of-reference UIDs,
``ImageOrientationPatient`` from the direction, ``ImagePositionPatient`` per slice from the grid.
"""

from __future__ import annotations

import locale
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@contextmanager
def kept_locale() -> Iterator[None]:
    """ITK's DICOM writer leaves the process locale at "C" (ASCII text I/O afterwards); put it back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def uid(suffix: str) -> str:
    return f"1.2.826.0.1.3680043.2.1125.99.{suffix}"


def write_series(
    image: sitk.Image,
    folder: Path,
    series: str = "1",
    modality: str = "MR",
    description: str = "T1 test series",
    study: str = "1",
    skip: Sequence[int] = (),
    positions: dict[int, Sequence[float]] | None = None,
) -> Path:
    """Write every z-slice of ``image`` (integer pixel type) as ``folder/slice_<i>.dcm``.

    ``skip`` leaves slices out; ``positions`` overrides the ImagePositionPatient of some slices.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    tags = {
        "0008|0060": modality,
        "0008|103e": description,
        "0010|0010": "Test^Patient",
        "0010|0020": "TEST01",
        "0020|000d": uid(f"{study}.1"),
        "0020|000e": uid(f"{study}.2.{series}"),
        "0020|0052": uid(f"{study}.3"),
        "0020|0011": series,
        "0020|0037": orientation,
        "0018|0050": f"{image.GetSpacing()[2]:.10g}",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with kept_locale():
        for i in range(image.GetDepth()):
            if i in skip:
                continue
            piece = image[:, :, i]
            for key, value in tags.items():
                piece.SetMetaData(key, value)
            position = (positions or {}).get(i, image.TransformIndexToPhysicalPoint((0, 0, i)))
            piece.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
            piece.SetMetaData("0020|0013", str(i + 1))
            piece.SetMetaData("0008|0018", uid(f"{study}.4.{series}.{i + 1}"))
            writer.SetFileName(str(folder / f"slice_{i:03d}.dcm"))
            writer.Execute(piece)
    return folder


def oblique_image(shape: tuple[int, int, int] = (12, 10, 6), seed: int = 0) -> sitk.Image:
    """A small int16 volume on a rotated, anisotropic, off-origin grid (right-handed, as DICOM stacks are)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 3000, size=shape[::-1], dtype=np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]])
    image.SetDirection(tuple(rot.ravel()))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-40.5, 12.25, 80.0))
    return image
