"""Turn a dataset on disk (MSD folder, paired folder, CSV manifest) into a list of cases."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class DatasetError(ValueError):
    """A dataset description that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Case:
    """One scan: its image file(s) (one per channel, or one multi-channel file) and optional label."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """What the dataset declares: label names and input channels."""

    name: str
    labels: dict[int, str]
    modalities: dict[int, str] = field(default_factory=lambda: {0: "MR"})
    cases: tuple[Case, ...] = ()

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def strip_suffix(name: str) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _inside(root: Path, rel: str, source: Path) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{source}: path {rel!r} points outside the dataset folder {root}")
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset.json not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: malformed dataset.json ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: malformed dataset.json (top level is not an object)")
    return data


def _int_keyed(mapping: object, what: str, source: Path) -> dict[int, str]:
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{source}: '{what}' must be a non-empty object")
    out: dict[int, str] = {}
    for k, v in mapping.items():
        try:
            out[int(k)] = str(v)
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: '{what}' key {k!r} is not an integer") from None
    return dict(sorted(out.items()))


def read_msd(root: str | Path) -> DatasetInfo:
    """Read a Medical Segmentation Decathlon folder (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``)."""
    root = Path(root)
    source = root / "dataset.json"
    meta = _read_json(source)
    labels = _int_keyed(meta.get("labels"), "labels", source)
    if 0 not in labels:
        raise DatasetError(f"{source}: 'labels' must declare 0 (background)")
    modalities = _int_keyed(meta.get("modality", {"0": "MR"}), "modality", source)
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{source}: 'training' must be a non-empty list of {{image, label}} entries")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DatasetError(f"{source}: training[{i}] has no 'image' path")
        image = _inside(root, entry["image"], source)
        label = entry.get("label")
        label_path = _inside(root, label, source) if isinstance(label, str) else None
        cases.append(Case(strip_suffix(image.name), (image,), label_path))
    _check_unique(cases, source)
    return DatasetInfo(str(meta.get("name", root.name)), labels, modalities, tuple(cases))


def read_manifest(manifest: str | Path, labels: dict[int, str] | None = None) -> DatasetInfo:
    """Read a CSV manifest with columns ``case_id,image,label`` (paths relative to the CSV)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest not found")
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"case_id", "image"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{manifest}: missing column(s) {sorted(missing)}")
        rows = list(reader)
    root = manifest.parent
    cases = []
    for row in rows:
        label = (row.get("label") or "").strip()
        cases.append(
            Case(
                row["case_id"],
                (_inside(root, row["image"], manifest),),
                _inside(root, label, manifest) if label else None,
            )
        )
    _check_unique(cases, manifest)
    return DatasetInfo(manifest.stem, labels or _labels_sidecar(root), {0: "MR"}, tuple(cases))


def read_folder(root: str | Path) -> DatasetInfo:
    """Read ``images/`` and ``labels/`` folders whose files are paired by case id."""
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder not found")
    cases = []
    for image in sorted(p for p in images_dir.iterdir() if p.name.endswith(IMAGE_SUFFIXES)):
        cid = strip_suffix(image.name)
        matches = [p for p in labels_dir.glob(f"{cid}.*") if strip_suffix(p.name) == cid] if labels_dir.is_dir() else []
        cases.append(Case(cid, (image,), matches[0] if matches else None))
    if not cases:
        raise DatasetError(f"{images_dir}: no image files found")
    return DatasetInfo(root.name, _labels_sidecar(root), {0: "MR"}, tuple(cases))


def _labels_sidecar(root: Path) -> dict[int, str]:
    path = root / "dataset.json"
    if path.is_file():
        return _int_keyed(_read_json(path).get("labels"), "labels", path)
    return {0: "background", 1: "foreground"}


def _check_unique(cases: list[Case], source: Path) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise DatasetError(f"{source}: case id {case.case_id!r} appears twice")
        seen.add(case.case_id)


def read_dataset(root: str | Path, layout: str = "msd", manifest: str | None = None) -> DatasetInfo:
    """Dispatch on the configured layout."""
    if layout == "msd":
        return read_msd(root)
    if layout == "csv":
        return read_manifest(manifest or Path(root) / "manifest.csv")
    if layout == "folder":
        return read_folder(root)
    raise DatasetError(f"unknown dataset layout {layout!r}")
