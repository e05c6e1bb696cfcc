"""Preprocess a dataset: fingerprint, plan the target spacing, run the deterministic chain per case."""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import io
from pipeline.dataset import Case, DatasetInfo
from pipeline.transforms import preprocessing

logger = logging.getLogger(__name__)

PLANS_FILE = "plans.json"
CASES_FILE = "cases.csv"


@dataclass(frozen=True)
class Plan:
    """What preprocessing did, and what inference must redo on a new scan."""

    target_spacing: tuple[float, float, float]
    normalization: str
    crop_foreground: bool
    labels: dict[int, str]
    modalities: dict[int, str]

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    def to_dict(self) -> dict:
        return {
            "target_spacing": list(self.target_spacing),
            "normalization": self.normalization,
            "crop_foreground": self.crop_foreground,
            "labels": {str(k): v for k, v in self.labels.items()},
            "modalities": {str(k): v for k, v in self.modalities.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            tuple(float(s) for s in d["target_spacing"]),  # type: ignore[arg-type]
            d["normalization"],
            bool(d["crop_foreground"]),
            {int(k): v for k, v in d["labels"].items()},
            {int(k): v for k, v in d["modalities"].items()},
        )


def header_fingerprint(case: Case) -> dict:
    """Geometry of a case read from its header only (no voxel data)."""
    img = nib.load(str(case.images[0]))
    zooms = img.header.get_zooms()[:3]
    ornt = nib.orientations.io_orientation(img.affine)
    # spacing after reorientation to RAS: permute the zooms like the axes
    ras_spacing = [float(zooms[int(ax)]) for ax in np.argsort(ornt[:, 0])]
    return {
        "case_id": case.case_id,
        "shape": "x".join(str(s) for s in img.shape),
        "spacing": "x".join(f"{z:.4g}" for z in zooms),
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "dtype": str(img.get_data_dtype()),
        "ras_spacing_0": ras_spacing[0],
        "ras_spacing_1": ras_spacing[1],
        "ras_spacing_2": ras_spacing[2],
    }


def plan_spacing(fingerprints: pd.DataFrame) -> tuple[float, float, float]:
    """Median spacing per RAS axis."""
    return tuple(float(np.median(fingerprints[f"ras_spacing_{i}"])) for i in range(3))  # type: ignore[return-value]


def make_plan(
    info: DatasetInfo,
    fingerprints: pd.DataFrame,
    target_spacing: Sequence[float] | None,
    normalization: str,
    crop_foreground: bool,
) -> Plan:
    """Fill the plan from the config, planning what the config leaves open."""
    spacing = tuple(float(s) for s in target_spacing) if target_spacing else plan_spacing(fingerprints)
    return Plan(spacing, normalization, crop_foreground, dict(info.labels), dict(info.modalities))  # type: ignore[arg-type]


def case_data(case: Case) -> dict:
    """The input dict the transform chain expects."""
    image = [str(p) for p in case.images] if len(case.images) > 1 else str(case.images[0])
    data: dict = {"image": image}
    if case.label is not None:
        data["label"] = str(case.label)
    return data


def preprocess_case(case: Case, plan: Plan, out_dir: Path) -> dict:
    """Run the chain on one case, write ``images/<id>.npy`` and ``labels/<id>.npy``; return its stats row."""
    chain = preprocessing(plan.target_spacing, case.label is not None, plan.normalization, plan.crop_foreground)
    out = chain(case_data(case))
    image = out["image"].numpy().astype(np.float32)
    row: dict = {"case_id": case.case_id, "preprocessed_shape": "x".join(str(s) for s in image.shape[1:])}
    io.write_npy(out_dir / "images" / f"{case.case_id}.npy", image)
    if case.label is not None:
        label = np.rint(out["label"].numpy()).astype(np.uint8)
        io.write_npy(out_dir / "labels" / f"{case.case_id}.npy", label)
        for k in plan.labels:
            if k:
                row[f"voxels_{k}"] = int((label == k).sum())
    row["intensity_mean"] = float(image.mean())
    row["intensity_std"] = float(image.std())
    return row


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_one(args: tuple[Case, Plan, Path]) -> dict:
    return preprocess_case(*args)


def fingerprint_dataset(info: DatasetInfo) -> pd.DataFrame:
    """Header fingerprint of every case, one row each."""
    return pd.DataFrame([header_fingerprint(c) for c in info.cases])


def preprocess_dataset(
    info: DatasetInfo, plan: Plan, out_dir: str | Path, fingerprints: pd.DataFrame, workers: int = 1
) -> pd.DataFrame:
    """Preprocess every case (in a process pool when ``workers`` > 1) and write plans and the case table."""
    out_dir = Path(out_dir)
    jobs = [(c, plan, out_dir) for c in info.cases]
    if workers > 1:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            rows = list(tqdm(pool.map(_run_one, jobs), total=len(jobs), desc="preprocess", unit="case"))
    else:
        rows = [_run_one(j) for j in tqdm(jobs, desc="preprocess", unit="case")]
    table = fingerprints.merge(pd.DataFrame(rows), on="case_id")
    io.write_csv(out_dir / CASES_FILE, table)
    io.write_json(out_dir / PLANS_FILE, plan.to_dict())
    logger.info("preprocessed %d cases to %s (spacing %s)", len(rows), out_dir, plan.target_spacing)
    return table


def load_plan(preprocessed_dir: str | Path) -> Plan:
    import json

    return Plan.from_dict(json.loads((Path(preprocessed_dir) / PLANS_FILE).read_text()))
