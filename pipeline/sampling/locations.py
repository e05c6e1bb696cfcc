"""The crop-centre locations training samples are drawn from (the case-level split: :mod:`pipeline.core.splits`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.core import io

logger = logging.getLogger(__name__)

MAX_LOCATIONS = 10000  # per class and case; crop centres are drawn from these


def class_locations(label: np.ndarray, num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Up to MAX_LOCATIONS flat voxel indices per class (class 0: any voxel, for random crops)."""
    flat = label.reshape(-1)
    out = {"c0": np.sort(rng.choice(flat.size, size=min(MAX_LOCATIONS, flat.size), replace=False))}
    for k in range(1, num_classes):
        idx = np.flatnonzero(flat == k)
        if idx.size > MAX_LOCATIONS:
            idx = np.sort(rng.choice(idx, size=MAX_LOCATIONS, replace=False))
        out[f"c{k}"] = idx.astype(np.int64)
    return out


def build_samples(
    preprocessed_dir: str | Path,
    out_dir: str | Path,
    assignment: dict[str, str],
    num_classes: int,
    mode: str,
    slice_axis: int,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Write crop-centre locations for training/validation cases and the sample table (with each case's
    ``group``, when the split has groups: validation pools a group's cases)."""
    preprocessed_dir, out_dir = Path(preprocessed_dir), Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for case_id, split in tqdm(sorted(assignment.items()), desc="sample", unit="case"):
        row: dict = {"case_id": case_id, "split": split}
        if groups:
            row["group"] = groups.get(case_id, "")
        if split != "test":
            label = np.load(preprocessed_dir / "labels" / f"{case_id}.npy")[0]
            locs = class_locations(label, num_classes, rng)
            path = io.inside(out_dir, "locations", f"{case_id}.npz")
            io.write_atomic(path, lambda p, locs=locs: np.savez(p, **locs))
            for k in range(1, num_classes):
                row[f"voxels_{k}"] = int((label == k).sum())
            if mode == "2d":
                other = tuple(a for a in range(3) if a != slice_axis)
                row["slices"] = label.shape[slice_axis]
                row["foreground_slices"] = int((label > 0).any(axis=other).sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    io.write_csv(out_dir / "samples.csv", table)
    return table


def read_samples(samples_dir: str | Path) -> pd.DataFrame:
    """The sample table; case ids and groups as text (an id ``001`` stays ``001``)."""
    return pd.read_csv(Path(samples_dir) / "samples.csv", dtype={"case_id": str, "group": str})


def load_locations(samples_dir: str | Path, case_id: str, num_classes: int) -> list[np.ndarray]:
    with np.load(io.inside(samples_dir, "locations", f"{case_id}.npz")) as z:
        return [z[f"c{k}"] for k in range(num_classes)]
