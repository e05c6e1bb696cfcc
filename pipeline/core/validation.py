"""Check every case of a dataset before anything is written; report all problems at once.

Each problem is one line naming the file (:class:`Problem`); nothing here raises on bad data. Checks:
the dataset description (see :mod:`pipeline.core.dataset`), every file (missing, empty, truncated, corrupt,
header promising more data than the file holds, wrong dimensionality, zero or negative spacing, NaN/Inf
intensities), and per case the label against the image (shape, spacing, origin, direction) and the label
values (integers, declared in ``dataset.json``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.core.cases import DATASET_ROW, Case, DatasetInfo, Problem, printable
from pipeline.core.geometry import sub_grid_offset
from pipeline.core.labels import read_label
from pipeline.core.parallel import run_pool
from pipeline.core.readers import Header, ReadError, read_array

__all__ = [
    "Problem",
    "check_case",
    "check_scan",
    "validate_dataset",
    "format_problems",
    "summary_line",
    "validate_or_exit",
]

logger = logging.getLogger(__name__)

SPACING_RTOL = 1e-3  # relative tolerance on voxel sizes
SPACING_ATOL = 1e-3  # mm
DIRECTION_ATOL = 1e-3  # on direction cosines
ORIGIN_ATOL = 1e-3  # mm
ORIGIN_RTOL = 1e-5  # relative to the origin's magnitude (float32 headers far from 0)
POOL_MIN_BYTES = 64 * 2**20  # below this much data a process pool costs more than it saves


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _read(
    path: Path | str, case_id: str, problems: list[Problem], reader: Callable = read_array
) -> tuple[np.ndarray, Header] | None:
    try:
        return reader(path)
    except ReadError as err:
        problems.append(Problem(case_id, str(path), str(err)))
    except MemoryError:
        problems.append(Problem(case_id, str(path), "too large to read into memory"))
    return None


def _voxel_sizes(header: Header) -> np.ndarray:
    return np.linalg.norm(header.affine[:3, :3], axis=0)


def _check_image(path: Path | str, case_id: str, problems: list[Problem]) -> tuple[np.ndarray, Header] | None:
    """Read one image and check it on its own; returns it when it is usable for the pairwise checks."""
    read = _read(path, case_id, problems)
    if read is None:
        return None
    data, header = read
    if data.ndim not in (3, 4):
        msg = f"wrong dimensionality: expected a 3D volume (or 4D multi-channel), got {data.ndim}D {_shape(data.shape)}"
        problems.append(Problem(case_id, str(path), msg))
        return None
    if data.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            problems.append(Problem(case_id, str(path), f"image contains NaN or Inf intensities ({bad} voxels)"))
    sizes = _voxel_sizes(header)
    if not np.all(np.isfinite(header.affine)) or np.any(sizes <= 1e-9):
        problems.append(Problem(case_id, str(path), f"zero or negative voxel spacing {_fmt(sizes)} in the affine"))
        return None
    return read


def _geometry_mismatch(ref: Header, other: Header) -> list[str]:
    """What differs between two headers beyond the tolerances (spacing, origin, direction)."""
    diffs = []
    ref_sizes, sizes = _voxel_sizes(ref), _voxel_sizes(other)
    ref_zooms, zooms = np.asarray(ref.spacing[:3]), np.asarray(other.spacing[:3])
    if not np.allclose(sizes, ref_sizes, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        diffs.append(f"spacing {_fmt(sizes)} vs image {_fmt(ref_sizes)} mm")
    elif zooms.shape == ref_zooms.shape and not np.allclose(zooms, ref_zooms, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        diffs.append(f"header spacing {_fmt(zooms)} vs image {_fmt(ref_zooms)} mm")
    origin, ref_origin = other.affine[:3, 3], ref.affine[:3, 3]
    if not np.allclose(origin, ref_origin, rtol=ORIGIN_RTOL, atol=ORIGIN_ATOL):
        diffs.append(f"origin {_fmt(origin)} vs image {_fmt(ref_origin)} mm")
    direction = other.affine[:3, :3] / np.where(sizes > 0, sizes, 1.0)
    ref_direction = ref.affine[:3, :3] / np.where(ref_sizes > 0, ref_sizes, 1.0)
    diff = float(np.abs(direction - ref_direction).max())
    if diff > DIRECTION_ATOL:
        diffs.append(f"direction cosines differ by up to {diff:.3g}")
    return diffs


def _check_pair(
    ref: tuple[np.ndarray, Header], other: tuple[np.ndarray, Header], what: str, path: Path | str, case_id: str
) -> list[Problem]:
    """Shape and geometry of a label (or extra channel file) against the first image."""
    problems = []
    ref_shape, shape = ref[0].shape[:3], other[0].shape[:3]
    if ref_shape != shape:
        why = f"image/{what} shape mismatch: {what} {_shape(shape)}, image {_shape(ref_shape)}"
        offset = sub_grid_offset(ref[1].affine, ref_shape, other[1].affine, shape) if what == "label" else None
        if offset is not None:
            why += (
                f"; the label covers only part of the image's grid, from voxel {offset}: save it on the image's "
                "whole grid (only a 3D Slicer .seg.nrrd cropped to its segments is placed there when read)"
            )
            return [Problem(case_id, str(path), why)]
        problems.append(Problem(case_id, str(path), why))
    diffs = _geometry_mismatch(ref[1], other[1])
    if diffs:
        kinds = "spacing" if all("spacing" in d for d in diffs) else "affine"
        problems.append(Problem(case_id, str(path), f"image/{what} {kinds} mismatch: {what} " + "; ".join(diffs)))
    return problems


def _check_label_values(
    data: np.ndarray, labels: dict[int, str], labels_source: str, path: Path | str, case_id: str
) -> list[Problem]:
    values = np.unique(data)
    if values.dtype.kind in "fc":
        if not np.all(np.isfinite(values)):
            return [Problem(case_id, str(path), "label contains NaN or Inf values")]
        fractional = values[np.mod(values, 1) != 0]
        if fractional.size:
            examples = ", ".join(f"{v:.6g}" for v in fractional[:3])
            return [Problem(case_id, str(path), f"non-integer label values (e.g. {examples})")]
    if not labels:  # the dataset description is broken; that is reported once already
        return []
    undeclared = sorted(set(int(v) for v in values) - set(labels))
    if not undeclared:
        return []
    declared = ", ".join(str(k) for k in labels)
    where = "the default labels (no dataset.json)" if not labels_source else labels_source
    where = "dataset.json" if where.endswith(".json") else where
    return [Problem(case_id, str(path), f"label values {undeclared} not declared in {where} (declared: {declared})")]


def _check_channels(images: Sequence[tuple[np.ndarray, Header] | None], channels: int, case: Case) -> list[Problem]:
    """The case's input channels against the number the dataset declares (2D grey <-> RGB is converted)."""
    if any(read is None for read in images):
        return []
    have = sum(data.shape[3] if data.ndim == 4 else 1 for data, _ in images)  # type: ignore[misc]
    picture = not images[0][1].physical_spacing  # type: ignore[index]
    if have == channels or (picture and {have, channels} == {1, 3}):
        return []
    msg = f"{have} input channel(s), dataset.json declares {channels} (modality / channel_names)"
    return [Problem(case.case_id, str(case.images[0]), msg)]


def check_scan(case_id: str, paths: Sequence[Path]) -> tuple[list[tuple[np.ndarray, Header] | None], list[Problem]]:
    """Read and check the image file(s) of one scan (each on its own, then each channel file against the
    first); returns one read per file (None for a file that is unusable) and the problems."""
    problems: list[Problem] = []
    images = [_check_image(p, case_id, problems) for p in paths]
    ref = images[0] if images else None
    for path, other in zip(paths[1:], images[1:], strict=True):
        if ref is not None and other is not None:
            problems.extend(_check_pair(ref, other, "channel", path, case_id))
    return images, problems


def check_case(
    case: Case, labels: dict[int, str], labels_source: str = "dataset.json", channels: int | None = None
) -> list[Problem]:
    """All problems of one case (empty list when it is fine); never raises on bad data.

    ``labels`` are the declared ``{stored value: name}``; ``channels`` the declared number of input channels.
    """
    problems: list[Problem] = []
    try:
        images, problems = check_scan(case.case_id, case.images)
        if channels is not None:
            problems.extend(_check_channels(images, channels, case))
        ref = images[0]
        if case.label is None:
            return problems
        as_stages = partial(read_label, values=list(labels), like=case.images[0])  # as the stages read it
        read = _read(case.label, case.case_id, problems, as_stages)
        if read is None:
            return problems
        data, header = read
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim == 4 and not header.physical_spacing:  # a 2D picture whose channels differ
            msg = (
                f"a colour mask ({data.shape[3]} channels that differ): a label mask holds one value per pixel "
                "(grey, or a palette PNG whose indices are the classes)"
            )
            problems.append(Problem(case.case_id, str(case.label), msg))
            return problems
        if data.ndim != 3:
            msg = f"wrong dimensionality: expected a 3D label volume, got {data.ndim}D {_shape(data.shape)}"
            problems.append(Problem(case.case_id, str(case.label), msg))
            return problems
        if np.any(_voxel_sizes(header) <= 1e-9) or not np.all(np.isfinite(header.affine)):
            msg = f"zero or negative voxel spacing {_fmt(_voxel_sizes(header))} in the affine"
            problems.append(Problem(case.case_id, str(case.label), msg))
        elif ref is not None:
            problems.extend(_check_pair(ref, (data, header), "label", case.label, case.case_id))
        problems.extend(_check_label_values(data, labels, labels_source, case.label, case.case_id))
    except Exception as err:  # noqa: BLE001 - a validator reports, it does not crash
        logger.debug("unexpected error checking %s", case.case_id, exc_info=True)
        problems.append(Problem(case.case_id, str(case.images[0]), f"unexpected error: {type(err).__name__}: {err}"))
    return problems


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _total_bytes(cases: Sequence[Case]) -> int:
    total = 0
    for case in cases:
        for path in (*case.images, case.label):
            try:
                total += path.stat().st_size if path is not None else 0
            except OSError:
                pass
    return total


def validate_dataset(info: DatasetInfo, workers: int | None = None, progress: bool = True) -> list[Problem]:
    """Check the dataset description and every case; returns every problem found, in case order.

    Cases are checked in a process pool of ``workers`` (default: up to 4 cores) when there is enough data
    to make it worth it (``workers`` given explicitly > 1 always uses the pool).
    """
    problems = list(info.problems)
    channels = len(info.modalities) if info.modalities_declared else None
    check = partial(check_case, labels=info.declared_labels, labels_source=info.labels_source, channels=channels)
    cases = list(info.cases)
    if workers is None:
        workers = _default_workers() if len(cases) > 1 and _total_bytes(cases) >= POOL_MIN_BYTES else 1
    results = run_pool(check, cases, workers, "validate", progress=progress)
    for result in results:
        problems.extend(result)
    if not cases and not problems:
        problems.append(Problem(DATASET_ROW, info.name, "the dataset has no cases"))
    logger.debug("validated %d cases: %d problem(s)", len(cases), len(problems))
    return problems


def format_problems(problems: Sequence[Problem]) -> str:
    """A plain-text table ``case  file  problem``, one line per problem."""
    rows = [("case", "file", "problem")] + [
        (printable(p.case_id), printable(p.file), " ".join(printable(p.problem).split())) for p in problems
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def summary_line(problems: Sequence[Problem]) -> str:
    """``validation failed: N problem(s) in M case(s)`` (dataset-level problems counted apart)."""
    cases = {p.case_id for p in problems if p.case_id != DATASET_ROW}
    dataset = sum(p.case_id == DATASET_ROW for p in problems)
    extra = f" and {dataset} in the dataset description" if dataset else ""
    return f"validation failed: {len(problems)} problem(s) in {len(cases)} case(s){extra}"


def validate_or_exit(info: DatasetInfo, workers: int | None = None) -> None:
    """Validate; on any problem exit with status 1, the whole table and a summary on stderr."""
    problems = validate_dataset(info, workers)
    if problems:
        raise SystemExit(f"{format_problems(problems)}\n{summary_line(problems)}")
    logger.info("validated %d cases: no problems", len(info.cases))
