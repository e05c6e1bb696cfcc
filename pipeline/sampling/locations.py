"""Case-level splits and the crop-centre locations training samples are drawn from."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.core import io

logger = logging.getLogger(__name__)

SPLITS_VERSION = 1
MAX_LOCATIONS = 10000  # per class and case; crop centres are drawn from these


def _case_hash(case_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()[:16]


def make_splits(case_ids: list[str], test_fraction: float, folds: int, seed: int) -> dict:
    """Hold out a test set, then split the rest into ``folds`` cross-validation folds (by case)."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    ids = sorted(case_ids)
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    n_test = int(round(test_fraction * len(ids)))
    test, rest = sorted(order[:n_test]), order[n_test:]
    if len(rest) < folds:
        raise ValueError(f"{len(rest)} non-test cases cannot make {folds} folds")
    fold_lists = [sorted(rest[i::folds]) for i in range(folds)]
    return {
        "version": SPLITS_VERSION,
        "seed": seed,
        "test_fraction": test_fraction,
        "folds": fold_lists,
        "test": test,
        "cases_sha": _case_hash(ids),
    }


def load_or_make_splits(path: str | Path, case_ids: list[str], test_fraction: float, folds: int, seed: int) -> dict:
    """Reuse the split file if it was made for these cases and settings; otherwise write a new one."""
    path = Path(path)
    if path.is_file():
        old = json.loads(path.read_text())
        same = (
            old.get("version") == SPLITS_VERSION
            and old.get("cases_sha") == _case_hash(case_ids)
            and old.get("seed") == seed
            and old.get("test_fraction") == test_fraction
            and len(old.get("folds", [])) == folds
        )
        if same:
            logger.info("reusing split file %s", path)
            return old
        logger.warning("split file %s was made for other cases or settings: writing a new one", path)
    splits = make_splits(case_ids, test_fraction, folds, seed)
    io.write_json(path, splits)
    return splits


def check_fold(fold: int | str, folds: int) -> None:
    """Raise ``ValueError`` unless ``fold`` is a fold index below ``folds`` or ``"all"``."""
    if fold != "all" and not (isinstance(fold, int) and 0 <= fold < folds):
        raise ValueError(f"fold {fold!r} out of range 0..{folds - 1} (or 'all')")


def fold_assignment(splits: dict, fold: int | str) -> dict[str, str]:
    """case_id -> 'train' | 'val' | 'test' for one fold; fold ``"all"``: every non-test case trains."""
    check_fold(fold, len(splits["folds"]))
    out = {c: "test" for c in splits["test"]}
    for i, cases in enumerate(splits["folds"]):
        for c in cases:
            out[c] = "val" if i == fold else "train"
    return out


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
) -> pd.DataFrame:
    """Write crop-centre locations for training/validation cases and the sample table."""
    preprocessed_dir, out_dir = Path(preprocessed_dir), Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for case_id, split in tqdm(sorted(assignment.items()), desc="sample", unit="case"):
        row: dict = {"case_id": case_id, "split": split}
        if split != "test":
            label = np.load(preprocessed_dir / "labels" / f"{case_id}.npy")[0]
            locs = class_locations(label, num_classes, rng)
            io.write_atomic(out_dir / "locations" / f"{case_id}.npz", lambda p, locs=locs: np.savez(p, **locs))
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
    return pd.read_csv(Path(samples_dir) / "samples.csv")


def load_locations(samples_dir: str | Path, case_id: str, num_classes: int) -> list[np.ndarray]:
    with np.load(Path(samples_dir) / "locations" / f"{case_id}.npz") as z:
        return [z[f"c{k}"] for k in range(num_classes)]
