"""Planner (on fingerprints): spacing rule, per-modality normalisation, patch sizes under a memory budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA

from pipeline.config import PreprocessConfig
from pipeline.core.dataset import read_dataset
from pipeline.preprocessing.fingerprint import fingerprint_dataset, intensity_statistics
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.planner import (
    MIN_PATCH,
    activation_bytes_per_voxel,
    make_plan,
    plan_patch,
    plan_spacing,
    pool_per_axis,
)
from pipeline.preprocessing.transforms import preprocessing

LESIONS = SHARED_DATA / "pyradiomics_lesions"


def write_dataset(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], modality: str, spacing=(1, 1, 1)):
    """A tiny MSD-layout dataset: ``cases`` maps id -> (image, label) arrays."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    training = []
    for cid, (image, label) in cases.items():
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {"name": "t", "modality": {"0": modality}, "labels": {"0": "background", "1": "organ"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return read_dataset(root, "msd")


def ct_case(seed: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """CT-like: air around a soft-tissue body, an organ label, bone and a few metal outliers (HU)."""
    rng = np.random.default_rng(seed)
    image = np.full((24, 24, 12), -1000.0, dtype=np.float32)
    image[3:21, 3:21, 1:11] = 40 + rng.normal(0, 15, (18, 18, 10))
    label = np.zeros(image.shape, dtype=np.uint8)
    label[6:16, 6:16, 3:9] = 1
    image[label == 1] = 60 + offset + rng.normal(0, 20, int(label.sum()))
    image[6:8, 6:16, 3:9] = 900 + rng.normal(0, 50, (2, 10, 6))  # bone inside the organ's box
    image[10, 10, 5] = 3000  # metal
    return image.astype(np.float32), label


def fingerprints_of(spacings: list[tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{f"ras_spacing_{i}": s[i] for i in range(3)} for s in spacings])


def test_spacing_rule_median_and_anisotropic_slow_axis() -> None:
    iso, slow = plan_spacing(fingerprints_of([(1, 1, 1), (1, 1, 1.2), (0.9, 0.9, 1)]))
    assert slow is None and iso == (1.0, 1.0, 1.0)
    thick = [(0.7, 0.7, 5.0)] * 9 + [(0.8, 0.8, 1.5)]
    target, slow = plan_spacing(fingerprints_of(thick), anisotropy_threshold=3, percentile=10)
    assert slow == 2
    assert target[:2] == (0.7, 0.7)
    assert target[2] == pytest.approx(np.percentile([5.0] * 9 + [1.5], 10))
    # the slow axis is never made finer than the in-plane axes
    target, _ = plan_spacing(fingerprints_of([(0.5, 0.5, 4.0), (0.5, 0.5, 4.0), (0.5, 0.5, 0.3)]), percentile=0)
    assert target[2] == 0.5


@pytest.mark.skipif(not LESIONS.is_dir(), reason="shared lesion data not available")
def test_plan_on_anisotropic_lesions_keeps_the_slow_axis_coarse(tmp_path: Path) -> None:
    info = read_dataset(LESIONS, "msd")
    table, samples = fingerprint_dataset(info, workers=1, cache_dir=tmp_path)
    assert set(table["orientation"]) == {"LAS", "LPS"}
    assert list(table["voxels_1"]) == [int(v) for v in table["voxels_1"]] and table["voxels_1"].min() > 100
    assert (table["fg0_p0.5"] <= table["fg0_p50"]).all() and (table["fg0_p50"] <= table["fg0_p99.5"]).all()
    plan = make_plan(info, table, samples, PreprocessConfig(out_dir=str(tmp_path)))
    assert plan.slow_axis == 2 and plan.fingerprint["anisotropic"]
    assert plan.target_spacing[:2] == pytest.approx((0.78125, 0.78125))
    assert plan.target_spacing[2] >= 2.1 and plan.target_spacing[2] > 3 * plan.target_spacing[0]  # not ~0.78
    assert plan.intensity == ({"scheme": "zscore"},) and plan.normalization == "zscore"  # "MRI"
    assert plan.configurations["2d"]["slice_axis"] == 2
    # the cache is reused: nothing is read again
    again, _ = fingerprint_dataset(info, workers=1, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table.reset_index(drop=True), check_dtype=False)


def test_ct_normalisation_clips_to_foreground_percentiles_and_uses_dataset_stats(tmp_path: Path) -> None:
    info = write_dataset(tmp_path / "ct", {"ct_a": ct_case(0), "ct_b": ct_case(1, offset=100)}, "CT")
    table, samples = fingerprint_dataset(info, workers=1)
    plan = make_plan(info, table, samples, PreprocessConfig(out_dir=str(tmp_path / "out")))
    (spec,) = plan.intensity
    assert spec["scheme"] == "ct" and plan.normalization == "ct"
    pooled = np.concatenate([s[0] for s in samples.values()]).astype(np.float64)
    assert pooled.size == sum(int(c[1].sum()) for c in (ct_case(0), ct_case(1)))  # every foreground voxel
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    assert spec["clip"] == pytest.approx([lo, hi])
    assert hi < 3000 and lo > -1000  # the metal voxel and the air are outside the window
    clipped = np.clip(pooled, lo, hi)
    assert spec["mean"] == pytest.approx(clipped.mean()) and spec["std"] == pytest.approx(clipped.std())

    chain = preprocessing(with_label=True, **plan.transform_kwargs())
    outs = {c.case_id: chain({"image": str(c.images[0]), "label": str(c.label)}) for c in info.cases}
    for out in outs.values():
        image = out["image"].numpy()
        assert image.max() == pytest.approx((hi - spec["mean"]) / spec["std"], rel=1e-5)  # clipped, not per image
        assert image.min() == pytest.approx((lo - spec["mean"]) / spec["std"], rel=1e-5)
    # dataset statistics: the brighter case stays brighter (per-image z-scoring would centre both at 0)
    fg = {cid: out["image"].numpy()[out["label"].numpy() > 0] for cid, out in outs.items()}
    both = np.concatenate(list(fg.values()))
    assert both.mean() == pytest.approx(0, abs=1e-4) and both.std() == pytest.approx(1, abs=1e-4)
    raw = {cid: np.clip(samples[cid][0].astype(np.float64), lo, hi).mean() for cid in fg}
    shift = (raw["ct_b"] - raw["ct_a"]) / spec["std"]
    assert shift > 0.2 and fg["ct_b"].mean() - fg["ct_a"].mean() == pytest.approx(shift, rel=1e-3)

    # overrides: a fixed window and statistics, or per-image z-score for everything
    fixed = make_plan(info, table, samples, PreprocessConfig(ct_clip=(-100, 200), ct_mean_std=(50, 25)))
    assert fixed.intensity == ({"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0},)
    assert make_plan(info, table, samples, PreprocessConfig(normalization="zscore")).intensity == (
        {"scheme": "zscore"},
    )
    window = intensity_statistics(samples, (-100, 200))[0]
    assert window["clipped_mean"] == pytest.approx(np.clip(pooled, -100, 200).mean())


def test_mr_modality_is_zscored_per_image(tmp_path: Path) -> None:
    info = write_dataset(tmp_path / "mr", {"a": ct_case(0), "b": ct_case(1, offset=100)}, "T2")
    table, samples = fingerprint_dataset(info)
    plan = make_plan(info, table, samples, PreprocessConfig())
    assert plan.intensity == ({"scheme": "zscore"},)
    image = preprocessing(with_label=False, **plan.transform_kwargs())({"image": str(info.cases[1].images[0])})["image"]
    assert float(image.mean()) == pytest.approx(0, abs=1e-5) and float(image.std(unbiased=False)) == pytest.approx(1)


def test_memory_estimate_matches_its_documentation() -> None:
    assert activation_bytes_per_voxel([4, 4, 4], 32) == pytest.approx(
        4 * 6 * 2 * 2 * (32 + 64 / 8 + 128 / 64 + 256 / 512 + 320 / 4096)
    )
    assert 4000 < activation_bytes_per_voxel([4, 4, 4], 32) < 4200
    assert 5800 < activation_bytes_per_voxel([5, 5], 32) < 6000
    # per-axis pooling: an axis that stops pooling keeps its resolution
    assert activation_bytes_per_voxel([4, 4, 1], 32) > activation_bytes_per_voxel([4, 4, 4], 32)


@pytest.mark.parametrize("budget", [0.05, 0.5, 2.0, 8.0])
def test_patch_sizes_respect_the_budget(budget: float) -> None:
    median, spacing = (300.0, 280.0, 120.0), (0.8, 0.8, 2.5)
    conf = plan_patch(median, spacing, budget, batch_size=2, base_width=32)
    patch, pools = conf["patch_size"], conf["pool_per_axis"]
    need = math.prod(patch) * activation_bytes_per_voxel(pools, 32) * 2
    assert need <= budget * 2**30 and conf["estimated_gb"] <= budget
    assert all(p % 2**k == 0 for p, k in zip(patch, pools, strict=True))
    assert pools == pool_per_axis(patch) and conf["depth"] == min(pools)
    assert all(p // 2**k >= 4 for p, k in zip(patch, pools, strict=True))
    assert all(p <= math.ceil(m / 2**k) * 2**k for p, m, k in zip(patch, median, pools, strict=True))


def test_patch_planning_details() -> None:
    # the median shape when it fits (hippocampus-like: rounded up to multiples of 2**pool)
    assert plan_patch((35, 50, 36), (1, 1, 1), 4.0, 2, 32)["patch_size"] == [40, 56, 40]
    # a bigger budget never gives a smaller patch
    sizes = [math.prod(plan_patch((256, 256, 200), (1, 1, 1), b, 2, 32)["patch_size"]) for b in (0.5, 1, 2, 4, 8)]
    assert sizes == sorted(sizes)
    # the physically longest axis shrinks first: a thick-slice axis keeps its voxels
    conf = plan_patch((256, 256, 24), (0.7, 0.7, 5.0), 8.0, 2, 32)
    assert conf["patch_size"] == [192, 192, 24] and conf["pool_per_axis"] == [5, 5, 2]
    # an impossible budget stops at the smallest patch
    assert plan_patch((64, 64, 64), (1, 1, 1), 1e-6, 2, 32)["patch_size"] == [MIN_PATCH] * 3
    assert pool_per_axis([7, 8, 15, 16, 40]) == [0, 1, 1, 2, 3]


def test_config_overrides_and_plan_round_trip(tmp_path: Path) -> None:
    info = write_dataset(tmp_path / "mr", {"a": ct_case(0), "b": ct_case(1)}, "MR", spacing=(0.5, 0.5, 2.0))
    table, samples = fingerprint_dataset(info)
    cfg = PreprocessConfig(
        target_spacing=(1.0, 1.0, 2.0), patch_size_3d=(32, 32, 8), depth_3d=2, patch_size_2d=(64, 48), depth_2d=3
    )
    plan = make_plan(info, table, samples, cfg)
    assert plan.target_spacing == (1.0, 1.0, 2.0)
    assert plan.configurations["3d"]["patch_size"] == [32, 32, 8] and plan.configurations["3d"]["depth"] == 2
    assert plan.configurations["2d"]["patch_size"] == [64, 48] and plan.configurations["2d"]["depth"] == 3
    assert plan.slow_axis == 2  # the data are anisotropic (4:1), whatever the target
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.volume_hash() == plan.volume_hash()
    # a plan written before the new fields existed still loads, with the old behaviour
    old = Plan.from_dict(
        {k: plan.to_dict()[k] for k in ("target_spacing", "normalization", "crop_foreground", "labels", "modalities")}
    )
    assert old.intensity == () and old.slow_axis is None and old.label_interp == "nearest"
    chain = preprocessing(with_label=False, **old.transform_kwargs())
    assert isinstance(chain({"image": str(info.cases[0].images[0])})["image"], torch.Tensor)
