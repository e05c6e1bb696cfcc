"""Score any folder of predicted masks against reference masks, as the evaluate stage scores its own.

Predictions may come from any program (nnU-Net, TotalSegmentator, a second reader in ITK-SNAP or 3D
Slicer): one mask file per case in any format the reader takes (NIfTI, NRRD, MetaImage, ...). A file's
case id is its name without the format suffix and without a trailing ``_pred``/``_seg``/``_mask``/
``_label`` tag. References are a folder of such masks (labels from a ``dataset.json`` beside or above it,
else the values found in the masks) or a dataset (MSD folder, ``images/`` + ``labels/``, CSV manifest).

Everything is checked before anything is written: every prediction has a reference, every mask is
readable and integer-valued with declared label values, and every prediction lies on its reference's
voxel grid (same shape; voxel-to-world affine equal within :data:`GRID_TOLERANCE_MM`). The per-case
table, summary (with the empty-mask policy) and HTML report are the evaluate stage's own
(:func:`pipeline.evaluation.metrics.case_metrics`, :func:`~pipeline.evaluation.metrics.summarize`,
:func:`pipeline.evaluation.evaluator.write_results`), so ``compare`` can pit any two of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.config import EvaluateConfig, to_dict
from pipeline.core.cases import Case, DatasetError
from pipeline.core.dataset import image_files, read_dataset
from pipeline.core.dataset_json import read_labels
from pipeline.core.labels import read_label
from pipeline.core.names import LABEL_PREFIX, LABEL_TAGS, bids_name, mask_case, scan_key
from pipeline.core.readers import SUPPORTED_SUFFIXES, Header, ReadError, is_image_file, strip_suffix
from pipeline.evaluation.evaluator import empty_policy, load_overlay, write_results
from pipeline.evaluation.metrics import case_metrics, summarize
from pipeline.evaluation.report import case_ranking, pick_cases
from pipeline.inference.model_folder import sha256

logger = logging.getLogger(__name__)

GRID_TOLERANCE_MM = 1e-3  # largest allowed difference between the two voxel-to-world affines
MASK_TAGS = ("_pred", "_prediction", *LABEL_TAGS)
Missing = Literal["error", "empty", "skip"]


class ScoreError(ValueError):
    """Inputs that cannot be scored; one line per problem, each naming its file."""


@dataclass(frozen=True)
class ScoreCase:
    """One reference and its prediction (None: missing, scored as an empty prediction)."""

    case_id: str
    reference: Path
    prediction: Path | None
    image: Path | None = None


def case_id_of(path: Path) -> str:
    """``case_001_seg.nrrd`` -> ``case_001``: name without format suffix and mask tag; a BIDS mask's session
    (``sub-01_ses-1_dseg`` -> ``sub-01_ses-1``, as ``predict`` names its prediction); LiTS's ``segmentation-0``
    -> ``0`` (:func:`pair_cases` pairs it with a prediction ``volume-0``)."""
    stem = strip_suffix(path.name)
    if (bids := bids_name(stem)) is not None and bids.is_label:
        return bids.case
    if (led := LABEL_PREFIX.fullmatch(stem)) is not None:
        return led["key"]
    for tag in MASK_TAGS:
        if stem.lower().endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem


def mask_files(folder: Path) -> dict[str, Path]:
    """Case id -> mask file of every image file directly in ``folder``."""
    if not folder.is_dir():
        raise ScoreError(f"{folder}: folder not found")
    out: dict[str, Path] = {}
    problems = []
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        cid = case_id_of(path)
        if cid in out:
            problems.append(f"{path}: case id {cid!r} also names {out[cid].name}")
        out[cid] = path
    if problems:
        raise ScoreError("\n".join(problems))
    if not out:
        raise ScoreError(f"{folder}: no mask files ({', '.join(SUPPORTED_SUFFIXES)})")
    return out


def is_dataset(path: Path) -> bool:
    """A dataset (manifest, MSD or images/labels folder, scans beside their ``<case>_mask`` files, or sub-folders
    of them) rather than a flat folder of masks."""
    if path.suffix.lower() == ".csv" or (path / "manifest.csv").is_file():
        return True
    if any((path / name).is_dir() for name in ("imagesTr", "images")):
        return True
    if not path.is_dir():
        return False  # mask_files says so
    files = image_files(path)
    tagged = sum(mask_case(f.name) is not None or case_id_of(f) != strip_suffix(f.name) for f in files)
    return not files or 0 < tagged < len(files)


def references(ref: Path, labels_file: Path | None = None) -> tuple[dict[str, Case], dict[int, str] | None, str]:
    """Reference cases by id, their label names (None: to be read off the masks) and a name for the report."""
    if is_dataset(ref):
        try:
            info = read_dataset(ref, "auto")
            info.raise_for_problems()
        except DatasetError as err:
            raise ScoreError(str(err)) from None
        cases = {c.case_id: c for c in info.cases if c.label is not None}
        labels = info.declared_labels if info.labels_source else None  # masks are scored by their stored values
        name = info.name
    else:
        cases = {cid: Case(cid, (), path) for cid, path in mask_files(ref).items()}
        sidecars = [p / "dataset.json" for p in (ref, ref.parent) if (p / "dataset.json").is_file()]
        labels_file = labels_file or (sidecars[0] if sidecars else None)
        labels, name = None, ref.name
    if labels_file is not None:
        try:
            labels = read_labels(labels_file)
        except DatasetError as err:
            raise ScoreError(str(err)) from None
    return cases, labels, name


def pair_cases(predictions: dict[str, Path], refs: dict[str, Case], missing: Missing = "skip") -> list[ScoreCase]:
    """Match predictions to references by case id (or by the key after a word naming scans, :func:`scan_key`:
    ``volume-0`` to ``0``); a prediction without reference is an error."""
    keyed = {cid: path for cid, path in predictions.items() if cid in refs}
    for cid, path in predictions.items():
        if cid not in refs:
            key = scan_key(cid)
            keyed[key if key in refs and key not in keyed else cid] = path  # else reported under its own id
    predictions = keyed
    problems = [f"{path}: no reference for case {cid!r}" for cid, path in predictions.items() if cid not in refs]
    absent = sorted(set(refs) - set(predictions))
    if absent and missing == "error":
        shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        problems.append(f"no prediction for {len(absent)} reference case(s): {shown} (see --missing)")
    if problems:
        raise ScoreError("\n".join(problems))
    pairs = []
    for cid, case in sorted(refs.items()):
        if cid in predictions or missing == "empty":
            image = case.images[0] if case.images else None
            pairs.append(ScoreCase(cid, case.label, predictions.get(cid), image))
    if absent:
        how = "scored as empty predictions" if missing == "empty" else "not scored"
        logger.warning("%d reference case(s) without prediction, %s: %s", len(absent), how, absent[:10])
    return pairs


def read_mask(
    path: Path, values: Sequence[float] | None = None, like: Path | None = None
) -> tuple[np.ndarray, Header]:
    """A label volume (spatial axes only) and its header; :class:`ScoreError` naming the file if it is not one.

    A 2D picture (no physical spacing, one slice) comes back 2D, so it is scored by contours, in pixels. A
    lossy (JPEG) mask is read as the nearest of ``values`` (the declared label values; None: 0/255). ``like``:
    the scan (or a prediction on its grid) a cropped 3D Slicer segmentation is placed onto (``read_label``).
    """
    try:
        data, header = read_label(path, values, like)
    except ReadError as err:
        raise ScoreError(f"{path}: {err}") from None
    data = np.asarray(data)
    while data.ndim > 2 and data.ndim > len(header.spacing) and data.shape[-1] == 1:
        data = data[..., 0]  # a trailing singleton channel
    if not header.physical_spacing and data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or data.ndim > len(header.spacing):
        raise ScoreError(f"{path}: not a 2D or 3D label volume (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        raise ScoreError(f"{path}: non-integer values; expected a label volume")
    return np.rint(data).astype(np.int32) if not np.issubdtype(data.dtype, np.integer) else data, header


def grid_problem(pred: Header, ref: Header) -> str | None:
    """Why a prediction is not on its reference's voxel grid, or None when it is."""
    p_shape, r_shape = pred.shape[: len(pred.spacing)], ref.shape[: len(ref.spacing)]
    if p_shape != r_shape:
        return f"grid {'x'.join(map(str, p_shape))} differs from the reference's {'x'.join(map(str, r_shape))}"
    diff = float(np.abs(np.asarray(pred.affine) - np.asarray(ref.affine)).max())
    if diff > GRID_TOLERANCE_MM:
        return (
            f"voxel-to-world affine differs from the reference's by up to {diff:.4g} mm (tolerance "
            f"{GRID_TOLERANCE_MM:g} mm): resample the prediction onto the reference grid first"
        )
    return None


def check_cases(pairs: list[ScoreCase], labels: dict[int, str] | None) -> tuple[dict[int, str], bool]:
    """Read every pair once; raise one :class:`ScoreError` listing every problem.

    Returns the label names and whether every reference has a physical spacing (False for 2D pictures).
    """
    problems: list[str] = []
    values: set[int] = set()
    physical = True
    for pair in tqdm(pairs, desc="check", unit="case", disable=len(pairs) < 20):
        try:
            ref, ref_header = read_mask(pair.reference, list(labels or ()), pair.image or pair.prediction)
            physical &= ref_header.physical_spacing
            found = set(np.unique(ref).tolist())
            if pair.prediction is not None:
                pred, pred_header = read_mask(pair.prediction)
                if (why := grid_problem(pred_header, ref_header)) is not None:
                    problems.append(f"{pair.prediction}: {why} ({pair.reference.name})")
                found |= set(np.unique(pred).tolist())
        except ScoreError as err:
            problems.append(str(err))
            continue
        if labels is not None and (undeclared := sorted(found - set(labels))):
            problems.append(f"{pair.prediction or pair.reference}: label value(s) {undeclared} are not declared")
        values |= found
    if problems:
        raise ScoreError("\n".join(problems))
    if labels is None:
        labels = {0: "background", **{v: f"label_{v}" for v in sorted(values) if v != 0}}
        logger.info("no label names given: scoring the values found in the masks %s", sorted(labels))
    return labels, physical


def score_rows(pair: ScoreCase, labels: dict[int, str], e: EvaluateConfig) -> list[dict]:
    """The per-class metric rows of one case, with the names and SHA-256 of its files."""
    ref, header = read_mask(pair.reference, list(labels), pair.image or pair.prediction)
    pred = read_mask(pair.prediction)[0] if pair.prediction is not None else np.zeros_like(ref)
    provenance = {
        "case_id": pair.case_id,
        "prediction_file": pair.prediction.name if pair.prediction else "",
        "prediction_sha256": sha256(pair.prediction) if pair.prediction else "",
        "label_file": pair.reference.name,
        "label_sha256": sha256(pair.reference),
    }
    if pair.image is not None:
        provenance["image_file"] = pair.image.name
    spacing = header.spacing[: ref.ndim]
    metrics = case_metrics(pred, ref, spacing, labels, e.nsd_tolerance_mm, empty_policy(e))
    return [{**provenance, **m} for m in metrics]


def score(
    pred_dir: str | Path,
    ref: str | Path,
    out_dir: str | Path,
    e: EvaluateConfig = EvaluateConfig(),
    missing: Missing = "skip",
    labels_file: str | Path | None = None,
) -> dict:
    """Score ``pred_dir`` against ``ref``; write per_case.csv, summary.json and report.html into ``out_dir``."""
    pred_dir, ref, out_dir = Path(pred_dir), Path(ref), Path(out_dir)
    refs, labels, name = references(ref, Path(labels_file) if labels_file else None)
    predictions = mask_files(pred_dir)
    pairs = pair_cases(predictions, refs, missing)
    if not pairs:
        raise ScoreError(f"{pred_dir}: no prediction matches a reference case in {ref}")
    labels, physical = check_cases(pairs, labels)
    rows = [row for pair in tqdm(pairs, desc="score", unit="case") for row in score_rows(pair, labels, e)]
    per_case = pd.DataFrame(rows)
    summary = summarize(per_case, n_bootstrap=e.n_bootstrap, seed=e.seed, policy=empty_policy(e))
    summary["n_cases"] = len(pairs)
    summary["physical_spacing"] = physical  # False: 2D pictures, distances in pixels (as evaluate says)
    summary["n_missing_predictions"] = sum(p.prediction is None for p in pairs)  # scored as empty
    summary["n_references_not_scored"] = len(set(refs) - set(predictions)) if missing == "skip" else 0
    by_id = {p.case_id: p for p in pairs}
    ranking = case_ranking(per_case).set_index("case_id")["mean_dice"]
    overlays = (  # drawn only when the references come with their images
        load_overlay(Case(cid, (by_id[cid].image,), by_id[cid].reference), by_id[cid].prediction, role, ranking[cid])
        for role, cid in pick_cases(per_case).items()
        if by_id[cid].image is not None and by_id[cid].prediction is not None
    )
    config = {"predictions": str(pred_dir), "references": str(ref), "missing": missing, "evaluate": to_dict(e)}
    write_results(
        out_dir,
        per_case,
        summary,
        config=config,
        overlays=overlays,
        class_names=labels,
        title=f"Scores of {pred_dir.name} against {name} ({len(pairs)} cases)",
    )
    mean = "n/a" if summary["mean_dice"] is None else f"{summary['mean_dice']:.4f}"
    logger.info("mean Dice %s over %d cases; written to %s", mean, len(pairs), out_dir)
    return summary
