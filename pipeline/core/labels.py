"""Label values as declared <-> classes 0..K-1: the one place where stored values become classes and back.

A dataset may declare label values that are not 0..K-1: a binary mask stored as 0/255, BraTS 0/1/2/4,
integers stored as floats. The pipeline works on classes 0..K-1 (class k is the k-th declared value in
increasing order); files it reads are mapped with :func:`to_classes` (preprocessing, fingerprint,
evaluation) and predictions are written back with :func:`to_values`. ``values`` empty means the classes
are the values (0..K-1), nothing to map. Both use MONAI's ``MapLabelValue``.

:func:`declared_labels` turns a ``{value: name}`` declaration into class names and values;
:func:`values_found` reads the label files of a dataset that declares nothing (a paired folder without
``dataset.json``), so that its labels are inferred from the masks.

Lossy masks (JPEG, as some 2D photograph sets ship them: Kvasir-SEG's polyps) hold compression noise around
their label values at every edge. Every label file is read through :func:`read_label`, which turns such a
mask into label values: a colour mask to grey, then each pixel to the nearest of the dataset's stored label
values, or, when nothing is declared, to 0 or 255 (a binary mask: 0 below 128, 255 from 128 up). Lossless
masks are returned as stored (a 2D mask with a colour palette: its palette indices, the classes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.core.readers import Header

logger = logging.getLogger(__name__)

#: ``DatasetInfo.labels_source`` of labels inferred from the masks
INFERRED = "(values found in the label files)"
#: more distinct values than this in the masks of an undeclared dataset is not a label map
MAX_INFERRED_VALUES = 32
#: lossy picture formats: a mask stored so holds values around its label values (compression noise at edges)
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: the values an undeclared lossy mask is read with: binary, the foreground 255 (JPEG stores 8 bits)
LOSSY_BINARY = (0, 255)


def is_identity(values: Sequence[float]) -> bool:
    """True when the values are the classes themselves (0..K-1) or there are none."""
    return not values or [float(v) for v in values] == [float(k) for k in range(len(values))]


def declared_labels(declared: Mapping[int, str]) -> tuple[dict[int, str], tuple[int, ...]]:
    """``{value: name}`` -> (``{class: name}``, values in class order; empty when they are 0..K-1)."""
    values = tuple(sorted(int(v) for v in declared))
    classes = {k: str(declared[v]) for k, v in enumerate(values)}
    return classes, (() if is_identity(values) else values)


def is_lossy(path: str | Path) -> bool:
    """True for a file in a lossy format (JPEG), whose mask values are only near the label values."""
    return str(path).lower().endswith(LOSSY_SUFFIXES)


def nearest_values(data: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Each element of ``data`` replaced by the nearest of ``values`` (a tie goes to the lower value)."""
    levels = np.unique(np.asarray(values, dtype=np.float64))
    index = np.searchsorted((levels[1:] + levels[:-1]) / 2, np.asarray(data, dtype=np.float64), side="left")
    return levels[index]


def _restore_lossy(
    data: np.ndarray, header: Header, path: str | Path, values: Sequence[float] | None = None
) -> tuple[np.ndarray, Header]:
    """A label file's array as read, brought back to label values when its format is lossy (JPEG).

    A colour mask ``(x, y, 1, c)`` becomes grey (luma), then every pixel takes the nearest of ``values``
    (the dataset's stored label values; None or empty: :data:`LOSSY_BINARY`). A lossless file is returned as is.
    """
    if not is_lossy(path):
        return data, header
    from pipeline.core.image2d import LUMA

    pixels = np.asarray(data, dtype=np.float64)
    if pixels.ndim == 4 and pixels.shape[-1] == len(LUMA):
        pixels = pixels @ np.asarray(LUMA)
    elif pixels.ndim == 4:
        pixels = pixels.mean(axis=-1)
    levels = [float(v) for v in values] if values else list(LOSSY_BINARY)
    snapped = nearest_values(pixels, levels)
    dtype = np.uint8 if min(levels) >= 0 and max(levels) <= 255 else np.int32
    out = snapped.astype(dtype)
    return out, replace(header, shape=out.shape, dtype=str(out.dtype))


#: 3D Slicer's segmentation files, which may hold only the block of the scan's grid around the segments
SLICER_SEGMENTATION = ".seg.nrrd"


def is_slicer_segmentation(path: str | Path) -> bool:
    """True for a 3D Slicer segmentation (``<case>.seg.nrrd``): segment names in its header, maybe cropped."""
    return str(path).lower().endswith(SLICER_SEGMENTATION)


def read_label(
    path: str | Path, values: Sequence[float] | None = None, like: str | Path | None = None
) -> tuple[np.ndarray, Header]:
    """A label file as :func:`~pipeline.core.readers.read_array` reads it, except that a 2D mask with a colour
    palette gives its palette indices (:func:`~pipeline.core.image2d.read_array_2d`) and a lossy (JPEG) mask is
    brought back to ``values`` (the dataset's stored label values; None: binary 0/255): colour to grey, then
    each pixel to the nearest value. ``like`` (the case's scan): a 3D Slicer segmentation holding a block of the
    scan's grid (cropped to its segments) is placed on the scan's whole grid (:func:`on_scan_grid`)."""
    from pipeline.core.image2d import is_image2d, read_array_2d
    from pipeline.core.readers import read_array

    read = read_array_2d(path, mask=True) if is_image2d(path) else read_array(path)
    data, header = _restore_lossy(*read, path, values)
    if like is not None and is_slicer_segmentation(path):
        from pipeline.core.readers import read_header

        data, header = on_scan_grid(data, header, read_header(Path(like)))
    return data, header


def on_scan_grid(data: np.ndarray, header: Header, scan: Header) -> tuple[np.ndarray, Header]:
    """A label holding a block of its scan's grid (same voxel axes and size, shifted by whole voxels) on the scan's
    whole grid, background elsewhere; any other label as it is (validation reports a mismatch)."""
    from pipeline.core.geometry import place_on_grid, sub_grid_offset

    offset = sub_grid_offset(scan.affine, scan.shape[:3], header.affine, data.shape[:3])
    if offset is None:
        return data, header
    data = place_on_grid(data, offset, scan.shape[:3])
    return data, replace(header, shape=data.shape, affine=scan.affine, spacing=scan.spacing, native=None)


def stored_values(n_classes: int, values: Sequence[float] = ()) -> tuple[float, ...]:
    """The value each class is stored with: ``values`` when the dataset declares them, else 0..K-1."""
    return tuple(values) or tuple(range(n_classes))


def _mapper(source: Sequence[float], target: Sequence[float], dtype: object):  # noqa: ANN202 - MONAI transform
    from monai.transforms import MapLabelValue

    return MapLabelValue(orig_labels=list(source), target_labels=list(target), dtype=dtype)


def to_classes(label: np.ndarray, values: Sequence[float], dtype: object = np.int16) -> np.ndarray:
    """Stored label values -> classes 0..K-1 (values not declared are left as they are; validation reports them)."""
    label = np.rint(np.asarray(label))
    if is_identity(values):
        return label.astype(dtype)
    return np.asarray(_mapper(values, range(len(values)), dtype)(label))


def to_values(classes: np.ndarray, values: Sequence[float], dtype: object | None = None) -> np.ndarray:
    """Classes 0..K-1 -> the declared label values (the smallest integer type that holds them by default)."""
    classes = np.asarray(classes)
    if is_identity(values):
        return classes if dtype is None else classes.astype(dtype)
    if dtype is None:
        top = max(float(v) for v in values)
        dtype = np.uint8 if top <= 255 and min(values) >= 0 else np.uint16 if 0 <= top <= 65535 else np.int32
    return np.asarray(_mapper(range(len(values)), values, dtype)(classes))


def inferred_labels(values: Iterable[float]) -> dict[int, str]:
    """Names for label values found in the masks: ``{0: background, v: "foreground"}`` for one foreground
    value, ``{0: background, v: "label <v>"}`` for several."""
    found = sorted({int(v) for v in values} | {0})
    if len(found) == 2:
        return {0: "background", found[1]: "foreground"}
    return {v: ("background" if v == 0 else f"label {v}") for v in found}


def values_found(label_files: Iterable[str | Path]) -> tuple[list[int], list[tuple[str, str]]]:
    """Distinct integer values over the label files, and ``(file, problem)`` when they are not a label map.

    Unreadable files and non-integer values are skipped here (validation reports them per case).
    """
    from pipeline.core.readers import ReadError

    found: set[int] = set()
    for path in label_files:
        try:
            data, _ = read_label(path)  # a lossy mask: binary, 0/255
        except (ReadError, MemoryError):
            continue
        values = np.unique(data)
        if values.dtype.kind in "fc" and (not np.all(np.isfinite(values)) or np.any(np.mod(values, 1) != 0)):
            continue
        found.update(int(v) for v in values)
        if len(found) > MAX_INFERRED_VALUES:
            problem = f"more than {MAX_INFERRED_VALUES} distinct label values: not a label map (an image as a mask?)"
            return sorted(found), [(str(path), problem)]
    return sorted(found), []


def _segment_names(cases: Sequence[Any], found: Sequence[int]) -> dict[int, str]:
    """Names of the label values ``found`` that 3D Slicer segmentations (``<case>.seg.nrrd``) give their segments
    (the first name of each value); {} when the masks are not such files."""
    from pipeline.core.readers import ReadError
    from pipeline.core.readers.itk import segment_names

    names: dict[int, str] = {}
    wanted = set(found) - {0}
    for case in cases:
        if wanted <= names.keys():
            break
        if case.label is None or not is_slicer_segmentation(case.label):
            continue
        try:
            for value, name in segment_names(case.label).items():
                names.setdefault(value, name)
        except ReadError:
            continue  # validation reports the file
    return {v: n for v, n in names.items() if v in found and v != 0}


def resolve_labels(info: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A :class:`~pipeline.core.dataset.DatasetInfo` whose labels are declared, else inferred from its masks.

    Without a ``dataset.json`` (``labels_source`` empty) every label file is read and the values found
    become the classes (:func:`inferred_labels`); returns the new info and ``(file, problem)`` pairs.
    """
    lossy = [c.label for c in info.cases if c.label is not None and is_lossy(c.label)]
    if lossy:
        how = "of dataset.json" if info.labels_source else "(none declared: 0 below 128, 255 from 128 up)"
        logger.warning(
            "%d mask(s) stored as JPEG, which is lossy (e.g. %s): each pixel is read as the nearest label value %s",
            len(lossy),
            lossy[0],
            how,
        )
    if info.labels_source or not info.cases:
        return info, []
    found, problems = values_found(c.label for c in info.cases if c.label is not None)
    if problems or not found:
        return info, problems
    labels, values = declared_labels({**inferred_labels(found), **_segment_names(info.cases, found)})
    logger.info("no dataset.json: label values found in the masks: %s", ", ".join(map(str, found)))
    return replace(info, labels=labels, label_values=values, labels_source=INFERRED), []
