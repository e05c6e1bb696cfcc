"""Shared fixtures: a tiny synthetic study, preprocessed and sampled, in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from pipeline.config import from_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_params(base: Path, **train_overrides: object) -> dict:
    """A params dict for a study of 8 small synthetic cases, with every path under ``base``."""
    train = {
        "out_dir": str(base / "model"),
        "log_file": str(base / "train_log.csv"),
        "checkpoint_dir": str(base / "checkpoint"),
        "epochs": 4,
        "iters_per_epoch": 3,
        "batch_size": 4,
        "val_every": 1,
        "model": {"base_width": 8, "depth": 2},
    }
    train.update(train_overrides)
    return {
        "data": {"root": str(base.parent / "raw")},
        "synthetic": {"out_dir": str(base.parent / "raw"), "n_cases": 8},
        "split": {"file": str(base.parent / "splits.json"), "test_fraction": 0.25, "folds": 3},
        "preprocess": {"out_dir": str(base.parent / "pre"), "workers": 1},
        "sample": {"out_dir": str(base.parent / "samples"), "patch_size": [32, 32], "mode": "2d"},
        "train": train,
        "evaluate": {"predictions_dir": str(base / "pred"), "metrics_dir": str(base / "metrics"), "n_bootstrap": 100},
        "mlflow": {"tracking_uri": f"sqlite:///{base.parent / 'mlflow.db'}"},
    }


def plan_dict(target: tuple[float, ...] | list[float], labels: dict[int, str]) -> dict:
    """A basic preprocessing plan as model.json stores it (z-score, crop to the body)."""
    return {
        "target_spacing": [float(t) for t in target],
        "normalization": "zscore",
        "crop_foreground": True,
        "labels": {str(k): v for k, v in labels.items()},
        "modalities": {"0": "MR"},
    }


def write_params(path: Path, params: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthesised, preprocessed and sampled tiny study; returns its folder (runs go in sub-folders)."""
    from pipeline.core.synthetic import make_synthetic_dataset
    from pipeline.stages import preprocess, sample

    root = tmp_path_factory.mktemp("study")
    params = tiny_params(root / "run")
    cfg = from_dict(params)
    make_synthetic_dataset(Path(cfg.synthetic.out_dir), n_cases=cfg.synthetic.n_cases, seed=0)
    config = write_params(root / "base.yaml", params)
    assert preprocess.main(["--config", str(config)]) == 0
    assert sample.main(["--config", str(config)]) == 0
    return root


def write_msd_cases(
    root: Path, cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], labels: dict[str, str], prefix: str = "c"
) -> Path:
    """An MSD folder of NIfTI ``(image, label, affine)`` cases ``<prefix>0``, ``<prefix>1``, ..., with dataset.json."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, (image, label, affine) in enumerate(cases):
        cid = f"{prefix}{i}"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {"name": root.name, "modality": {"0": "MR"}, "labels": labels, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
