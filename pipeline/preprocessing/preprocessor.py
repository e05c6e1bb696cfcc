"""Preprocess a dataset: fingerprint, plan, then run the deterministic chain on every case.

Output folder (``preprocess.out_dir``)::

    fingerprint.csv             per-case fingerprint, fingerprint_samples.npz its intensity samples
    images/<id>.npy             (C, X, Y, Z) float32 on the RAS target grid, cropped, normalised
    labels/<id>.npy             (1, X, Y, Z) uint8
    meta/<id>.json              the case's geometry and statistics; written last: the case's "done" marker
    cases.csv                   fingerprint + per-case statistics after preprocessing
    plans.json                  the plan (Plan.to_dict)

Every file is written atomically (temporary file, then rename), so a killed run never leaves a file that
looks complete. A rerun skips every case whose marker matches the current plan and the case's source
files (size and modification time) and whose outputs are present with the recorded sizes, and removes
temporary files a killed run left behind.

The geometry record (``meta/<id>.json`` -> ``geometry``, :func:`pipeline.core.geometry.geometry_record`) holds
what puts a prediction back on the scan's own grid: original shape, affine and orientation, the RAS resampled
shape, the crop box and the final affine (:func:`pipeline.core.geometry.mapping_from_record`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config, PreprocessConfig
from pipeline.core import io
from pipeline.core.cases import Case, DatasetInfo
from pipeline.core.geometry import geometry_record
from pipeline.core.parallel import run_pool
from pipeline.preprocessing.fingerprint import fingerprint_dataset, source_key
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.planner import make_plan
from pipeline.preprocessing.transforms import preprocessing

__all__ = [
    "CASES_FILE",
    "PLANS_FILE",
    "case_data",
    "load_plan",
    "plan_dataset",
    "preprocess_case",
    "preprocess_dataset",
    "read_case_meta",
]

logger = logging.getLogger(__name__)

PLANS_FILE = "plans.json"
CASES_FILE = "cases.csv"
META_DIR = "meta"
_SUBDIRS = ("images", "labels", META_DIR)


def case_data(case: Case) -> dict:
    """The input dict the transform chain expects."""
    image = [str(p) for p in case.images] if len(case.images) > 1 else str(case.images[0])
    data: dict = {"image": image}
    if case.label is not None:
        data["label"] = str(case.label)
    return data


_CHAINS: dict[tuple[str, bool], object] = {}


def _chain(plan: Plan, with_label: bool) -> object:
    key = (plan.volume_hash(), with_label)
    if key not in _CHAINS:
        _CHAINS[key] = preprocessing(with_label=with_label, **plan.transform_kwargs())
    return _CHAINS[key]


def preprocess_case(case: Case, plan: Plan, out_dir: str | Path) -> dict:
    """Run the chain on one case; write its volumes, then its ``meta/<id>.json`` marker; return its row."""
    out_dir = Path(out_dir)
    out = _chain(plan, case.label is not None)(case_data(case))  # type: ignore[operator]
    image = out["image"].numpy().astype(np.float32, copy=False)
    row: dict = {"case_id": case.case_id, "preprocessed_shape": "x".join(str(s) for s in image.shape[1:])}
    files = {"image": f"images/{case.case_id}.npy"}
    io.write_npy(io.inside(out_dir, "images", f"{case.case_id}.npy"), image)
    if case.label is not None:
        label = np.rint(out["label"].numpy()).astype(np.uint8)
        files["label"] = f"labels/{case.case_id}.npy"
        io.write_npy(io.inside(out_dir, "labels", f"{case.case_id}.npy"), label)
        counts = np.bincount(label.ravel(), minlength=plan.num_classes)
        for k in plan.labels:
            if k:
                row[f"preprocessed_voxels_{k}"] = int(counts[k]) if k < counts.size else 0
    row["intensity_mean"] = float(image.mean())
    row["intensity_std"] = float(image.std())
    marker = {
        "case_id": case.case_id,
        "plan_hash": plan.volume_hash(),
        "source_key": source_key(case),
        "files": {k: {"path": v, "bytes": (out_dir / v).stat().st_size} for k, v in files.items()},
        "row": row,
        "geometry": geometry_record(out["image"]),
    }
    io.write_json(io.inside(out_dir, META_DIR, f"{case.case_id}.json"), marker)
    return row


def read_case_meta(out_dir: str | Path, case_id: str) -> dict:
    """The ``meta/<id>.json`` record of a preprocessed case (geometry, statistics, files)."""
    return json.loads(io.inside(out_dir, META_DIR, f"{case_id}.json").read_text())


def _finished_row(out_dir: Path, case: Case, plan_hash: str) -> dict | None:
    """The case's row if its outputs are complete and match the plan, else None."""
    try:
        marker = read_case_meta(out_dir, case.case_id)
        if marker.get("plan_hash") != plan_hash or marker.get("source_key") != source_key(case):
            return None
        if ("label" in marker["files"]) != (case.label is not None):
            return None
        for entry in marker["files"].values():
            if (out_dir / entry["path"]).stat().st_size != entry["bytes"]:
                return None
        return dict(marker["row"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_temporaries(out_dir: Path) -> int:
    """Delete the temporary files (``.<name>.*.tmp*``) a killed run left in the output folders."""
    removed = 0
    for sub in _SUBDIRS:
        folder = out_dir / sub
        if folder.is_dir():
            for path in folder.glob(".*.tmp*"):
                path.unlink(missing_ok=True)
                removed += 1
    for path in out_dir.glob(".*.tmp*") if out_dir.is_dir() else ():
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _run_one(args: tuple[Case, Plan, Path]) -> dict:
    return preprocess_case(*args)


def preprocess_dataset(
    info: DatasetInfo, plan: Plan, out_dir: str | Path, fingerprints: pd.DataFrame, workers: int = 1
) -> pd.DataFrame:
    """Preprocess every case not already done (in a process pool when ``workers`` > 1); write the tables.

    Returns the case table (fingerprint + per-case statistics), also written as ``cases.csv``.
    """
    out_dir = Path(out_dir)
    if removed := _remove_temporaries(out_dir):
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    plan_hash = plan.volume_hash()
    rows: dict[str, dict] = {}
    todo = []
    for case in info.cases:
        row = _finished_row(out_dir, case, plan_hash)
        if row is None:
            todo.append((case, plan, out_dir))
        else:
            rows[case.case_id] = row
    if rows:
        logger.info("%d case(s) already preprocessed with this plan, %d to do", len(rows), len(todo))
    for row in run_pool(_run_one, todo, workers, "preprocess"):
        rows[row["case_id"]] = row
    per_case = pd.DataFrame([rows[c.case_id] for c in info.cases])
    order = ["case_id", "preprocessed_shape", *(f"preprocessed_voxels_{k}" for k in sorted(plan.labels) if k)]
    order += ["intensity_mean", "intensity_std"]
    per_case = per_case[[c for c in order if c in per_case] + [c for c in per_case if c not in order]]
    table = fingerprints.merge(per_case, on="case_id")
    io.write_csv(out_dir / CASES_FILE, table)
    io.write_json(out_dir / PLANS_FILE, plan.to_dict())
    logger.info("preprocessed %d cases to %s (spacing %s)", len(rows), out_dir, plan.target_spacing)
    return table


def plan_dataset(info: DatasetInfo, cfg: PreprocessConfig, study: Config | None = None) -> tuple[Plan, pd.DataFrame]:
    """Fingerprint (cached in ``cfg.out_dir``) and plan (training overrides from ``study``); plan and fingerprints."""
    fingerprints, samples = fingerprint_dataset(info, cfg.workers, cfg.foreground_samples, cache_dir=cfg.out_dir)
    return make_plan(info, fingerprints, samples, cfg, study), fingerprints


def load_plan(preprocessed_dir: str | Path) -> Plan:
    return Plan.from_dict(json.loads((Path(preprocessed_dir) / PLANS_FILE).read_text()))
