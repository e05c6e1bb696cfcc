"""DICOM series in a folder: which files are DICOM, their series, and the rule that picks the scan's series.

A DICOM *case* is a folder. Every DICOM file beneath it (found by the ``DICM`` magic or a ``.dcm`` name;
hidden files skipped, symlinked folders not followed) is grouped by ``SeriesInstanceUID``; the series
to use is chosen by a :class:`~pipeline.config.DicomConfig` rule (modality, a series-description pattern,
or the largest series), set once per process with :func:`set_series_rule` (stages from ``data.dicom``,
``predict``/``validate`` from their ``--dicom-*`` options). More than one series left after the rule is
refused, naming them. Headers are read with pydicom (no pixel data); :mod:`pipeline.core.dicom` turns the
chosen series into a checked volume.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import DicomConfig
from pipeline.core.readers import ReadError

logger = logging.getLogger(__name__)

#: Segmentation Storage: SEG objects are results, never the scan
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class DicomError(ReadError):
    """A folder that cannot be read as one DICOM volume; the message is one line."""


_rule = DicomConfig()


def set_series_rule(rule: DicomConfig | None) -> None:
    """Set the rule that picks the series of every DICOM folder read in this process (None: the default)."""
    global _rule
    _rule = rule if rule is not None else DicomConfig()


def series_rule() -> DicomConfig:
    """The rule set with :func:`set_series_rule`."""
    return _rule


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--dicom-modality/--dicom-description/--dicom-largest`` options of the user tools."""
    group = parser.add_argument_group("DICOM series (a scan that is a folder of DICOM files)")
    group.add_argument("--dicom-modality", default=None, help="use the series of this Modality (e.g. MR, CT)")
    group.add_argument(
        "--dicom-description", default=None, help="use the series whose SeriesDescription matches this regex"
    )
    group.add_argument(
        "--dicom-largest", action="store_true", help="several series left: use the one with the most slices"
    )


def rule_from_args(args: argparse.Namespace) -> DicomConfig:
    """The rule given by :func:`add_rule_arguments`' options."""
    if args.dicom_description:
        try:
            re.compile(args.dicom_description)
        except re.error as err:
            raise ValueError(
                f"--dicom-description {args.dicom_description!r} is not a regular expression ({err})"
            ) from None
    return DicomConfig(args.dicom_modality, args.dicom_description, args.dicom_largest)


# ----------------------------------------------------------------------------------------------- finding


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble magic (``DICM`` at byte 128) or named ``*.dcm``."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_files(folder: Path, first_only: bool = False) -> list[Path]:
    """DICOM files beneath ``folder`` (sorted; hidden files and folders skipped)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file() and is_dicom_file(path):
                found.append(path)
                if first_only:
                    return found
    return found


def is_dicom_folder(path: str | Path) -> bool:
    """A folder holding at least one DICOM file (at any depth)."""
    path = Path(path)
    return path.is_dir() and bool(dicom_files(path, first_only=True))


def holds_dicom_files(folder: str | Path) -> bool:
    """A folder with a DICOM file directly in it (one scan), as opposed to a folder of scan folders."""
    folder = Path(folder)
    return folder.is_dir() and any(
        p.is_file() and not p.name.startswith(".") and is_dicom_file(p) for p in folder.iterdir()
    )


@dataclass(frozen=True)
class Series:
    """One series found in a folder: its headers (no pixel data) and files, in file-name order."""

    uid: str
    modality: str
    description: str
    number: int | None
    files: tuple[Path, ...]
    headers: tuple[Any, ...]  # pydicom Datasets read without pixel data

    def describe(self) -> str:
        number = "?" if self.number is None else self.number
        return f"#{number} {self.modality or '?'} {self.description!r} ({len(self.files)} files)"


def scan_folder(folder: Path) -> list[Series]:
    """Every image series beneath ``folder``, in series-number order; :class:`DicomError` if there is none.

    Objects that are not images (structured reports, presentation states, RT structures: no pixel matrix)
    and Segmentation objects (e.g. a SEG written next to its series) are skipped.
    """
    import pydicom

    files = dicom_files(folder)
    if not files:
        raise DicomError("no DICOM files in the folder")
    groups: dict[str, list[tuple[Path, Any]]] = {}
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # noqa: BLE001 - pydicom raises many types for broken files
            raise DicomError(f"{path.relative_to(folder)}: not a readable DICOM file ({error_line(err)})") from None
        if "Rows" not in ds or str(getattr(ds, "SOPClassUID", "")) == SEGMENTATION_SOP_CLASS:
            skipped += 1
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            raise DicomError(f"{path.relative_to(folder)}: no SeriesInstanceUID")
        groups.setdefault(uid, []).append((path, ds))
    if not groups:
        raise DicomError(f"no DICOM images in the folder ({skipped} non-image or segmentation objects)")
    if skipped:
        logger.debug("%s: skipped %d non-image or segmentation objects", folder, skipped)
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        number = getattr(first, "SeriesNumber", None)
        series.append(
            Series(
                uid,
                str(getattr(first, "Modality", "") or ""),
                str(getattr(first, "SeriesDescription", "") or ""),
                int(number) if number not in (None, "") else None,
                tuple(p for p, _ in members),
                tuple(d for _, d in members),
            )
        )
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))


def choose_series(series: Sequence[Series], rule: DicomConfig) -> Series:
    """The one series the rule leaves; :class:`DicomError` naming the candidates otherwise."""
    left = list(series)
    if rule.modality:
        left = [s for s in left if s.modality.upper() == rule.modality.upper()]
    if rule.description:
        try:
            pattern = re.compile(rule.description, re.IGNORECASE)
        except re.error as err:
            raise DicomError(
                f"series description pattern {rule.description!r} is not a regular expression ({err})"
            ) from None
        left = [s for s in left if pattern.search(s.description)]
    if not left:
        found = "; ".join(s.describe() for s in series)
        raise DicomError(f"no series matches {describe_rule(rule)} (found {found})")
    if len(left) > 1 and rule.largest:
        sizes = sorted((len(s.files) for s in left), reverse=True)
        if sizes[0] == sizes[1]:
            raise DicomError(
                f"{len(left)} series match and the largest is not unique: {'; '.join(s.describe() for s in left)}"
            )
        left = [max(left, key=lambda s: len(s.files))]
    if len(left) > 1:
        raise DicomError(
            f"mixed series: {len(left)} series ({'; '.join(s.describe() for s in left)}); choose one with "
            "--dicom-modality / --dicom-description / --dicom-largest (data.dicom in the config)"
        )
    return left[0]


def describe_rule(rule: DicomConfig) -> str:
    parts = [
        f"modality {rule.modality}" if rule.modality else "",
        f"description ~ {rule.description!r}" if rule.description else "",
    ]
    return ", ".join(p for p in parts if p) or "the rule"


def error_line(err: BaseException) -> str:
    """The last non-empty line of an error message (pydicom, GDCM), at most 200 characters."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]
