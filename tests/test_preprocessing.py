"""Preprocessing: real datasets end to end, physical extent, geometry record, resampling, kill and rerun."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SHARED_DATA, write_msd_cases
from monai.data import MetaTensor

from pipeline.config import PreprocessConfig
from pipeline.core.dataset import read_dataset
from pipeline.core.geometry import mapping_from_record, resample_to_native
from pipeline.preprocessing.preprocessor import (
    CASES_FILE,
    PLANS_FILE,
    load_plan,
    plan_dataset,
    preprocess_dataset,
    read_case_meta,
)
from pipeline.preprocessing.transforms import preprocessing
from pipeline.stages import preprocess

LESIONS = SHARED_DATA / "pyradiomics_lesions"
HIPPOCAMPUS = SHARED_DATA / "msd_hippocampus"
# float32 and uint8 images, and the two float32 label files
HIPPOCAMPUS_SUBSET = ("hippocampus_003", "hippocampus_004", "hippocampus_033", "hippocampus_070", "hippocampus_243")


def to_original_grid(label: np.ndarray, geometry: dict) -> np.ndarray:
    """A preprocessed label map back on the scan's grid by the one native mapping (one-hot, arg-max)."""
    onehot = torch.nn.functional.one_hot(torch.as_tensor(label, dtype=torch.long)).permute(3, 0, 1, 2).float()
    return resample_to_native(onehot, mapping_from_record(geometry))[0]


def run_stage(tmp: Path, root: Path, workers: int = 2, **preprocess_cfg: object) -> Path:
    out = Path(str(preprocess_cfg.pop("out_dir", tmp / "pre")))
    params = {"data": {"root": str(root), "layout": "msd"}, "preprocess": {"out_dir": str(out), "workers": workers}}
    params["split"] = {"file": str(tmp / "splits.json"), "test_fraction": 0.0, "folds": 2}  # every case planned
    params["preprocess"].update(preprocess_cfg)
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    assert preprocess.main(["--config", str(config)]) == 0
    return out


def world_box(affine: np.ndarray, shape: np.ndarray, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World (mm) bounding box of the voxels ``start .. start + shape - 1`` (voxel corners, not centres)."""
    start = np.zeros(3) if start is None else np.asarray(start, dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * np.asarray(shape)
    points = np.c_[corners + start - 0.5, np.ones(8)]
    world = (np.asarray(affine) @ points.T)[:3]
    return world.min(axis=1), world.max(axis=1)


def label_box(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(label > 0)
    return world_box(affine, idx.max(0) - idx.min(0) + 1, idx.min(0))


@pytest.fixture(scope="module")
def lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LESIONS.is_dir():
        pytest.skip("shared lesion data not available")
    return run_stage(tmp_path_factory.mktemp("lesions"), LESIONS)


@pytest.mark.parametrize("case_id", ["brain1_image", "brain2_image"])
def test_lesion_volumes_keep_their_physical_extent(lesions: Path, case_id: str) -> None:
    plan = load_plan(lesions)
    assert plan.slow_axis == 2 and 2.1 <= plan.target_spacing[2] < 6.5  # not upsampled to 0.78 mm
    meta = read_case_meta(lesions, case_id)
    geo = meta["geometry"]
    voxel = np.asarray(plan.target_spacing)
    assert geo["spacing"] == pytest.approx(list(plan.target_spacing))
    image = np.load(lesions / "images" / f"{case_id}.npy")
    label = np.load(lesions / "labels" / f"{case_id}.npy")
    assert list(image.shape[1:]) == geo["shape"] == list(label.shape[1:])

    raw_image = nib.load(LESIONS / f"{case_id}.nii.gz")
    raw_label = np.asarray(nib.load(LESIONS / f"{case_id.replace('image', 'label')}.nii.gz").dataobj)
    assert geo["original_shape"] == list(raw_image.shape) and geo["original_orientation"] == "LAS"
    assert np.allclose(geo["original_affine"], raw_image.affine)

    # the resampled grid before cropping covers the scan: extent along each RAS axis within one output voxel
    lo0, hi0 = world_box(raw_image.affine, np.asarray(raw_image.shape))
    start = -np.asarray(geo["crop_start"])
    lo, hi = world_box(np.asarray(geo["affine"]), np.asarray(geo["resampled_shape"]), start)
    assert np.all(np.abs((hi - lo) - (hi0 - lo0)) <= voxel), (lo, hi, lo0, hi0)
    assert np.all(np.abs(lo - lo0) <= voxel) and np.all(np.abs(hi - hi0) <= voxel)
    # the crop box is consistent with what was written
    cropped = np.asarray(geo["resampled_shape"]) - geo["crop_start"] - np.asarray(geo["crop_end"])
    assert list(cropped) == geo["shape"]

    # the lesion stays where it was: its world bounding box within one output voxel, its volume close
    llo0, lhi0 = label_box(raw_label, raw_image.affine)
    llo, lhi = label_box(label[0], np.asarray(geo["affine"]))
    assert np.all(np.abs(llo - llo0) <= voxel) and np.all(np.abs(lhi - lhi0) <= voxel)
    ml0 = (raw_label > 0).sum() * np.prod(geo["original_spacing"]) / 1000
    ml = (label > 0).sum() * np.prod(plan.target_spacing) / 1000
    assert ml == pytest.approx(ml0, rel=0.15)

    # and the geometry record puts it back on the scan's own grid
    back = to_original_grid(label[0], geo)
    assert back.shape == raw_label.shape
    dice = 2 * np.sum((back > 0) & (raw_label > 0)) / (np.sum(back > 0) + np.sum(raw_label > 0))
    assert dice > 0.95


def test_lesion_dataset_tables(lesions: Path) -> None:
    cases = pd.read_csv(lesions / CASES_FILE)
    assert list(cases["case_id"]) == ["brain1_image", "brain2_image", "breast1_image"]
    for column in ("orientation", "ras_spacing_2", "voxels_1", "fg0_p0.5", "fg0_p99.5", "preprocessed_voxels_1"):
        assert cases[column].notna().all(), column
    plans = json.loads((lesions / PLANS_FILE).read_text())
    settings = plans["settings"]
    assert settings["dims"]["value"] == 2 and settings["slice_axis"]["value"] == 2  # 0.78 x 0.78 x 6.5 mm
    assert len(settings["patch_size"]["value"]) == 2 and settings["epochs"]["source"] == "planned"
    assert not list(lesions.rglob(".*tmp*"))


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="shared hippocampus data not available")
def test_hippocampus_subset_round_trips_exactly(tmp_path: Path) -> None:
    root = tmp_path / "hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for cid in HIPPOCAMPUS_SUBSET:
            (root / sub / f"{cid}.nii.gz").symlink_to(HIPPOCAMPUS / sub / f"{cid}.nii.gz")
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    meta["training"] = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in HIPPOCAMPUS_SUBSET
    ]
    (root / "dataset.json").write_text(json.dumps(meta))
    out = run_stage(tmp_path, root, workers=1)
    plan = load_plan(out)
    assert plan.target_spacing == (1.0, 1.0, 1.0) and plan.slow_axis is None and plan.normalization == "zscore"
    for cid in HIPPOCAMPUS_SUBSET:
        geo = read_case_meta(out, cid)["geometry"]
        image = np.load(out / "images" / f"{cid}.npy")
        assert image.dtype == np.float32 and abs(image.mean()) < 1e-4 and image.std() == pytest.approx(1, abs=1e-3)
        raw = np.rint(np.asarray(nib.load(HIPPOCAMPUS / "labelsTr" / f"{cid}.nii.gz").dataobj)).astype(np.uint8)
        back = to_original_grid(np.load(out / "labels" / f"{cid}.npy")[0], geo)
        np.testing.assert_array_equal(back, raw)


# ------------------------------------------------------------------------------------- kill and rerun


def small_dataset(root: Path, n: int = 5) -> Path:
    """Anisotropic MR-like cases (0.8 x 0.8 x 3.2 mm) in mixed orientations, labels 1 and 2."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        image = rng.normal(100, 10, (40, 36, 10)).astype(np.float32)
        image[:3] = 0  # background to crop
        label = np.zeros(image.shape, dtype=np.uint8)
        label[10 + i : 20 + i, 8:20, 3:7] = 1
        label[22:28, 10:16, 2:5] = 2
        image[label == 1] += 50
        affine = np.diag([0.8, 0.8, 3.2, 1.0])
        if i % 2:  # stored L-P-S: flip the first two axes
            image, label = image[::-1, ::-1].copy(), label[::-1, ::-1].copy()
            affine = np.diag([-0.8, -0.8, 3.2, 1.0])
            affine[:2, 3] = [0.8 * 39, 0.8 * 35]
        cases.append((image, label, affine))
    return write_msd_cases(root, cases, {"0": "background", "1": "organ", "2": "lesion"}, prefix="case_")


def outputs(out: Path) -> dict[str, object]:
    """Every output file's content (arrays as arrays, JSON as objects)."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(out))
            found[rel] = np.load(path) if path.suffix == ".npy" else path.read_bytes()
    return found


def _die_on_save(dataset: Path, out: Path, plan: object, fingerprints: pd.DataFrame, die_at: int) -> None:
    """In a forked child: preprocess, but be SIGKILLed half-way through writing the ``die_at``-th array."""
    real_save = np.save
    calls = {"n": 0}

    def save(path: object, array: np.ndarray, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == die_at:
            with open(path, "wb") as fh:  # type: ignore[call-overload]
                fh.write(b"\x93NUMPY partial")
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(path, array, **kwargs)

    np.save = save  # type: ignore[assignment]
    preprocess_dataset(read_dataset(dataset, "msd"), plan, out, fingerprints, workers=1)  # type: ignore[arg-type]


def test_a_killed_run_leaves_nothing_that_looks_complete_and_a_rerun_finishes(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path / "raw")
    info = read_dataset(dataset, "msd")
    reference = run_stage(tmp_path / "ref", dataset, workers=2)
    expected = outputs(reference)
    assert len([k for k in expected if k.startswith("meta/")]) == 5

    out = tmp_path / "killed"
    plan, fingerprints = plan_dataset(info, PreprocessConfig(out_dir=str(out), workers=1))
    assert plan.slow_axis == 2
    # 2 arrays per case: the 6th save is case_2's label -> case_2's image is written, its marker is not
    child = mp.get_context("fork").Process(target=_die_on_save, args=(dataset, out, plan, fingerprints, 6))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "meta").iterdir()) == ["case_0.json", "case_1.json"]
    assert (out / "images" / "case_2.npy").is_file() and not (out / "labels" / "case_2.npy").exists()
    assert [p.name for p in (out / "labels").glob(".*tmp*")]  # the half-written file is a temporary one
    assert not (out / CASES_FILE).exists() and not (out / PLANS_FILE).exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("case_[01].npy")}

    # rerun (the stage, as a user would): finishes the job, identical to an uninterrupted run
    again = run_stage(tmp_path / "rerun", dataset, workers=2, out_dir=str(out))
    assert again == out
    got = outputs(out)
    assert sorted(got) == sorted(expected)
    for rel, value in expected.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[rel], value, err_msg=rel)
        elif rel.endswith(".csv"):
            pd.testing.assert_frame_equal(pd.read_csv(out / rel), pd.read_csv(reference / rel), check_exact=False)
        elif rel.endswith(".json"):
            assert json.loads(got[rel]) == json.loads(value), rel  # type: ignore[arg-type]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("case_[01].npy")} == done_before  # skipped

    # a damaged output (size differs from the marker) and a changed plan are redone
    np.save(out / "images" / "case_3.npy", np.zeros(3))
    run_stage(tmp_path / "rerun2", dataset, workers=1, out_dir=str(out))
    np.testing.assert_array_equal(np.load(out / "images" / "case_3.npy"), expected["images/case_3.npy"])
    # so is a case whose source file changed (DVC keeps the folder when the out is persistent)
    marker = out / "meta" / "case_4.json"
    before = marker.stat().st_mtime_ns
    raw = dataset / "imagesTr" / "case_4.nii.gz"
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    run_stage(tmp_path / "rerun3", dataset, workers=1, out_dir=str(out))
    assert marker.stat().st_mtime_ns != before
    assert (out / "meta" / "case_0.json").stat().st_mtime_ns < before
    run_stage(tmp_path / "rerun4", dataset, workers=1, out_dir=str(out), target_spacing=[1.6, 1.6, 3.2])
    assert np.load(out / "images" / "case_0.npy").shape[1] < expected["images/case_0.npy"].shape[1]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ the chain


def _volume(tmp_path: Path) -> tuple[str, str]:
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (30, 26, 8)).astype(np.float32) + 5
    label = np.zeros(image.shape, dtype=np.uint8)
    label[8:20, 6:18, 2:6] = 1
    label[12:16, 9:13, 3:5] = 2
    affine = np.diag([-0.7, 0.7, 4.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lbl.nii.gz")
    return str(tmp_path / "img.nii.gz"), str(tmp_path / "lbl.nii.gz")


def test_anisotropic_resampling_is_separable_invertible_and_keeps_old_calls_working(tmp_path: Path) -> None:
    image, label = _volume(tmp_path)
    data = {"image": image, "label": label}
    target = (0.7, 0.7, 1.4)
    one = preprocessing(target, crop_foreground=False)(data)
    two_chain = preprocessing(target, crop_foreground=False, slow_axis=2)
    two = two_chain(data)
    assert one["image"].shape == two["image"].shape == (1, 30, 26, 23)
    assert torch.allclose(one["image"].affine, two["image"].affine)
    # linear in-plane then linear along the slow axis is trilinear: same values
    assert torch.allclose(one["image"].as_tensor(), two["image"].as_tensor(), atol=1e-4)
    assert torch.equal(one["label"].as_tensor(), two["label"].as_tensor())
    assert set(torch.unique(two["label"]).tolist()) == {0.0, 1.0, 2.0}
    image_chain = preprocessing(target, with_label=False, slow_axis=2)  # as inference builds it
    pre = image_chain({"image": image})["image"]
    back = image_chain.inverse({"image": pre})["image"]
    assert back.shape == (1, 30, 26, 8) and torch.allclose(back.affine, torch.as_tensor(nib.load(image).affine))
    # spline in-plane, nearest along the slow axis; one-hot linear labels
    spline = preprocessing(
        target, slow_axis=2, image_interp="spline", slow_axis_interp="nearest", label_interp="linear", num_classes=3
    )(data)
    assert spline["label"].shape == spline["image"].shape and spline["label"].max() == 2
    inside = (two["label"] == 2).sum().item()
    assert (spline["label"] == 2).sum().item() == pytest.approx(inside, rel=0.3)
    # the original positional call (inference before it passes the plan) still builds a working chain
    legacy = preprocessing(target, False, "zscore", True)({"image": image})["image"]
    assert isinstance(legacy, MetaTensor) and abs(float(legacy.mean())) < 1e-4
    with pytest.raises(ValueError, match="statistics"):
        preprocessing(target, normalization="ct")
