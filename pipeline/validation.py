"""Check every case of a dataset before anything is written; report all problems at once."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pipeline.dataset import Case, DatasetInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""

    case_id: str
    file: str
    problem: str


def _load(path: Path, case_id: str, problems: list[Problem]) -> nib.spatialimages.SpatialImage | None:
    if not path.is_file():
        problems.append(Problem(case_id, str(path), "file not found"))
        return None
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any reader failure is reported as a problem
        problems.append(Problem(case_id, str(path), f"unreadable: {type(err).__name__}: {err}".splitlines()[0]))
        return None
    if data.ndim not in (3, 4):
        problems.append(Problem(case_id, str(path), f"expected a 3D (or 4D multi-channel) volume, got {data.ndim}D"))
        return None
    return img


def check_case(case: Case, labels: dict[int, str]) -> list[Problem]:
    """All problems of one case (empty list when it is fine)."""
    problems: list[Problem] = []
    image = _load(case.images[0], case.case_id, problems)
    if image is not None:
        data = np.asanyarray(image.dataobj)
        if not np.isfinite(data).all():
            problems.append(Problem(case.case_id, str(case.images[0]), "image contains NaN or Inf"))
    if case.label is None:
        return problems
    label = _load(case.label, case.case_id, problems)
    if label is None or image is None:
        return problems
    ldata = np.asanyarray(label.dataobj)
    if ldata.shape[:3] != image.shape[:3]:
        problems.append(
            Problem(case.case_id, str(case.label), f"label shape {ldata.shape} != image shape {image.shape}")
        )
    if not np.allclose(label.affine, image.affine, atol=1e-3):
        problems.append(Problem(case.case_id, str(case.label), "label affine differs from the image affine"))
    values = np.unique(ldata)
    if not np.all(np.mod(values, 1) == 0):
        problems.append(Problem(case.case_id, str(case.label), "label has non-integer values"))
    else:
        undeclared = sorted(set(values.astype(int).tolist()) - set(labels))
        if undeclared:
            problems.append(Problem(case.case_id, str(case.label), f"label values {undeclared} not declared in labels"))
    return problems


def validate_dataset(info: DatasetInfo) -> list[Problem]:
    """Check every case; returns every problem found."""
    problems: list[Problem] = []
    for case in tqdm(info.cases, desc="validate", unit="case"):
        problems.extend(check_case(case, info.labels))
    return problems


def format_problems(problems: list[Problem]) -> str:
    rows = [("case", "file", "problem")] + [(p.case_id, p.file, p.problem) for p in problems]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


def validate_or_exit(info: DatasetInfo) -> None:
    """Print the problem table and exit non-zero if any case is bad."""
    problems = validate_dataset(info)
    if problems:
        print(format_problems(problems), file=sys.stderr)
        raise SystemExit(
            f"validation failed: {len(problems)} problem(s) in {len({p.case_id for p in problems})} case(s)"
        )
    logger.info("validated %d cases: no problems", len(info.cases))
