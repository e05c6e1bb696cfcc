"""Write a label map as one multi-class DICOM Segmentation (SEG) object of its source series, with highdicom.

``write_seg(labels, volume, names, path)`` turns a ``(x, y, z)`` label map on the grid of a checked DICOM
series (:class:`pipeline.core.dicom.Volume`) into a BINARY Segmentation with one segment per foreground
class (segment number = class index, segment label = the class name from ``dataset.json``), whose frames
reference the source slices (and the source series), in their frame of reference. Empty frames are left
out; an all-empty prediction keeps its frames, so the object is never empty.

Coded concepts come from a label -> code map (:func:`load_code_map`, JSON or YAML), keyed by class index
or name::

    anterior:
      category: [SCT, "91723000", Anatomical Structure]
      type: {scheme: SCT, value: "5366008", meaning: Hippocampus}

Classes not in the map get 3D Slicer's generic default, SCT 85756007 "Tissue" for both.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.core import io
from pipeline.core.dicom import Volume

logger = logging.getLogger(__name__)

DEFAULT_CODE = ("SCT", "85756007", "Tissue")
CODE_KEYS = {"category", "type"}
SOFTWARE = "segpipe"


class CodeMapError(ValueError):
    """A label -> code map that cannot be used; the message names the file and the entry."""


def _code(value: Any, where: str) -> Any:
    from pydicom.sr.coding import Code

    if isinstance(value, Mapping):
        unknown = set(value) - {"scheme", "value", "meaning"}
        if unknown or not {"scheme", "value", "meaning"} <= set(value):
            raise CodeMapError(f"{where}: expected keys scheme, value, meaning (got {', '.join(map(str, value))})")
        parts = (value["scheme"], value["value"], value["meaning"])
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        parts = tuple(value)
    else:
        raise CodeMapError(f"{where}: expected [scheme, value, meaning] or a mapping of them, got {value!r}")
    if not all(isinstance(p, (str, int)) and str(p).strip() for p in parts):
        raise CodeMapError(f"{where}: scheme, value and meaning must be non-empty strings")
    scheme, code, meaning = (str(p).strip() for p in parts)
    return Code(value=code, scheme_designator=scheme, meaning=meaning)


def load_code_map(path: str | Path, names: Mapping[int, str]) -> dict[int, dict[str, Any]]:
    """Class index -> {"category": Code, "type": Code} from a JSON or YAML file keyed by class index or name."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise CodeMapError(f"{path}: cannot read the label code map ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(data, Mapping):
        raise CodeMapError(f"{path}: the label code map must be a mapping of label -> codes")
    by_name = {v: k for k, v in names.items()}
    out: dict[int, dict[str, Any]] = {}
    for key, entry in data.items():
        index = by_name.get(str(key))
        if index is None and str(key).isdigit() and int(key) in names:
            index = int(key)
        if index is None or index == 0:
            known = ", ".join(f"{k} {v}" for k, v in names.items() if k)
            raise CodeMapError(f"{path}: {key!r} is not a foreground class of the model ({known})")
        if not isinstance(entry, Mapping) or not set(entry) <= CODE_KEYS or not entry:
            raise CodeMapError(f"{path}: {key}: expected a mapping with 'category' and/or 'type'")
        out[index] = {k: _code(v, f"{path}: {key}.{k}") for k, v in entry.items()}
    return out


def segment_descriptions(names: Mapping[int, str], codes: Mapping[int, Mapping[str, Any]] | None = None) -> list:
    """One highdicom SegmentDescription per foreground class (number = class index)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm_codes
    from pydicom.sr.coding import Code

    default = Code(value=DEFAULT_CODE[1], scheme_designator=DEFAULT_CODE[0], meaning=DEFAULT_CODE[2])
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE, version=_version(), family=dcm_codes.cid7162.ArtificialIntelligence
    )
    out = []
    for index in sorted(k for k in names if k > 0):
        coded = (codes or {}).get(index, {})
        out.append(
            hd.seg.SegmentDescription(
                segment_number=index,
                segment_label=str(names[index])[:64],
                segmented_property_category=coded.get("category", default),
                segmented_property_type=coded.get("type", default),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segpipe")
    except PackageNotFoundError:
        return "0"


def source_headers(volume: Volume) -> list:
    """The series' slice headers as highdicom needs them (copies, completed where the source is incomplete).

    Files written without shared study or frame-of-reference UIDs, without SliceThickness or with a wrong
    SpacingBetweenSlices (e.g. by a bare SimpleITK series writer) get the first slice's study UID, one new
    frame-of-reference UID and the measured slice step; this is logged.
    """
    import highdicom as hd

    headers = [copy.deepcopy(h) for h in volume.headers]
    fixes = []
    studies = {str(getattr(h, "StudyInstanceUID", "")) for h in headers}
    if len(studies) > 1:
        fixes.append(f"{len(studies)} study UIDs -> the first slice's")
        for h in headers:
            h.StudyInstanceUID = headers[0].StudyInstanceUID
    frames = {str(getattr(h, "FrameOfReferenceUID", "")) for h in headers}
    if len(frames) > 1 or frames == {""}:
        frame = hd.UID() if "" in frames else headers[0].FrameOfReferenceUID
        fixes.append("no shared FrameOfReferenceUID -> a new one")
        for h in headers:
            h.FrameOfReferenceUID = frame
    if any(getattr(h, "SliceThickness", None) in (None, "") for h in headers):
        fixes.append(f"no SliceThickness -> the slice step {volume.spacing[2]:.4g} mm")
        for h in headers:
            if getattr(h, "SliceThickness", None) in (None, ""):
                h.SliceThickness = round(volume.spacing[2], 6)
    declared = {str(getattr(h, "SpacingBetweenSlices", "")) for h in headers} - {""}
    if declared and any(abs(float(v) - volume.spacing[2]) > 1e-3 * volume.spacing[2] for v in declared):
        fixes.append(f"SpacingBetweenSlices {'/'.join(sorted(declared))} -> the slice step {volume.spacing[2]:.4g} mm")
        for h in headers:
            h.SpacingBetweenSlices = round(volume.spacing[2], 6)
    if fixes:
        logger.warning("source series %s: %s (for the SEG only)", volume.series.describe(), "; ".join(fixes))
    return headers


def build_seg(
    labels: np.ndarray,
    volume: Volume,
    names: Mapping[int, str],
    codes: Mapping[int, Mapping[str, Any]] | None = None,
    description: str = "segpipe segmentation",
) -> Any:
    """The highdicom Segmentation of an ``(x, y, z)`` label map on ``volume``'s grid."""
    import highdicom as hd

    if tuple(labels.shape) != volume.shape:
        raise ValueError(f"label map of shape {labels.shape} is not on the series' grid {volume.shape}")
    present = {int(v) for v in np.unique(labels)} - {0}
    if present - set(names):
        raise ValueError(f"label values {sorted(present - set(names))} have no name in the model's labels")
    frames = np.ascontiguousarray(np.asarray(labels, dtype=np.uint8).transpose(2, 1, 0))  # (slice, row, column)
    first = volume.headers[0]
    return hd.seg.Segmentation(
        source_images=source_headers(volume),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(names, codes),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", None) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE,
        software_versions=_version(),
        device_serial_number="0",
        series_description=description[:64],
        omit_empty_frames=bool(present),
    )


def write_seg(
    labels: np.ndarray,
    volume: Volume,
    names: Mapping[int, str],
    path: str | Path,
    codes: Mapping[int, Mapping[str, Any]] | None = None,
) -> Path:
    """Write the SEG of ``labels`` (on ``volume``'s grid) to ``path`` atomically."""
    seg = build_seg(labels, volume, names, codes)
    return io.write_atomic(path, lambda p: seg.save_as(str(p), enforce_file_format=True))
