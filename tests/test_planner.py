"""Planner (on fingerprints): spacing rule, per-modality normalisation, patch sizes under a memory budget."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA

from pipeline.config import PreprocessConfig, from_dict
from pipeline.core.dataset import read_dataset
from pipeline.preprocessing.fingerprint import fingerprint_dataset, intensity_statistics
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.planner import (
    is_anisotropic,
    make_plan,
    plan_spacing,
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


def head_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MRI-like: a ball of tissue on a black background filling a fifth of the image, a lesion inside."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[:40, :40, :12]
    ball = (x - 20) ** 2 + (y - 20) ** 2 < 10**2
    image = np.where(ball, 300 + rng.normal(0, 40, ball.shape), 0.0).astype(np.float32)
    label = ((x - 18) ** 2 + (y - 22) ** 2 < 3**2) & (z > 3) & (z < 8)
    image[label] += 200
    return image, label.astype(np.uint8)


def test_mri_on_a_black_background_is_z_scored_inside_the_body(tmp_path: Path) -> None:
    info = write_dataset(tmp_path / "mr", {"mr_a": head_case(0), "mr_b": head_case(1)}, "MRI")
    table, samples = fingerprint_dataset(info, workers=1)
    plan = make_plan(info, table, samples, PreprocessConfig(out_dir=str(tmp_path / "out")))
    assert plan.intensity == ({"scheme": "zscore", "body": True},)
    setting = plan.settings["normalization"]
    assert setting["value"] == ["zscore_body"] and "keeps 23% of the median image, < 75%" in setting["reason"]
    chain = preprocessing(with_label=True, **plan.transform_kwargs())
    case = info.cases[0]
    image = chain({"image": str(case.images[0]), "label": str(case.label)})["image"].numpy()[0]
    raw = head_case(0)[0][11:30, 11:30]  # the crop box of the ball (19 x 19 of 40 x 40: 23%)
    body = raw > 0
    assert image.shape == raw.shape and (image[~body] == 0).all()  # the corners of the box stay 0
    assert image[body].mean() == pytest.approx(0, abs=1e-4) and image[body].std() == pytest.approx(1, abs=1e-4)
    # an override is plain per-image z-score; so is an image the body fills (a noisy background)
    over = make_plan(info, table, samples, PreprocessConfig(normalization="zscore"))
    assert over.intensity == ({"scheme": "zscore"},)
    filled = {
        k: (v[0] + np.random.default_rng(2).uniform(1, 5, v[0].shape).astype(np.float32), v[1])
        for k, v in {"mr_c": head_case(2), "mr_d": head_case(3)}.items()
    }
    info2 = write_dataset(tmp_path / "mr2", filled, "MRI")
    table2, samples2 = fingerprint_dataset(info2, workers=1)
    assert make_plan(info2, table2, samples2, PreprocessConfig()).intensity == ({"scheme": "zscore"},)
    forced = make_plan(info2, table2, samples2, PreprocessConfig(normalization="zscore_body"))  # and the other way
    assert forced.intensity == ({"scheme": "zscore", "body": True},)
    setting = forced.settings["normalization"]
    assert setting == {"value": ["zscore_body"], "source": "overridden", "reason": "set in the config"}


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


def test_one_anisotropy_rule_for_the_planner_and_training() -> None:
    """The planner's slow axis and training's in-plane-only augmentation follow the same rule and threshold."""
    assert is_anisotropic((1, 1, 3.01), 3.0) and not is_anisotropic((1, 1, 3.0), 3.0)
    assert is_anisotropic((0.5, 2.0, 1.0), 3.0) and not is_anisotropic((0.5, 2.0, 1.0), 4.0)
    spacings = [(0.8, 0.8, 2.5)] * 3
    for threshold in (2.0, 3.0, 3.2):
        _, slow = plan_spacing(fingerprints_of(spacings), anisotropy_threshold=threshold)
        assert (slow is not None) == is_anisotropic(spacings[0], threshold)


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
    # thick slices: 2D across the slow axis, the reason in the plan, the thick axis pooled last if forced 3D
    assert plan.setting("dims") == 2 and plan.setting("slice_axis") == 2
    assert "anisotropic" in plan.settings["dims"]["reason"]
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
    assert plan.intensity == ({"scheme": "zscore", "body": True},)  # the body's box: 47% of the image
    image = preprocessing(with_label=False, **plan.transform_kwargs())({"image": str(info.cases[1].images[0])})["image"]
    assert float(image.mean()) == pytest.approx(0, abs=1e-5) and float(image.std(unbiased=False)) == pytest.approx(1)


def test_config_overrides_and_plan_round_trip(tmp_path: Path) -> None:
    info = write_dataset(tmp_path / "mr", {"a": ct_case(0), "b": ct_case(1)}, "MR", spacing=(0.5, 0.5, 2.0))
    table, samples = fingerprint_dataset(info)
    cfg = PreprocessConfig(target_spacing=(1.0, 1.0, 2.0))
    study = from_dict({"sample": {"mode": "3d", "patch_size": [32, 32, 8]}, "train": {"model": {"depth": 2}}})
    plan = make_plan(info, table, samples, cfg, study)
    assert plan.target_spacing == (1.0, 1.0, 2.0) and plan.settings["target_spacing"]["source"] == "overridden"
    assert plan.setting("patch_size") == [32, 32, 8] and plan.setting("depth") == 2
    assert plan.slow_axis == 2  # the data are anisotropic (4:1), whatever the target
    assert plan.fingerprint["anisotropy_threshold"] == cfg.anisotropy_threshold
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.volume_hash() == plan.volume_hash()
    # a plan written before the new fields existed still loads, with the old behaviour
    old = Plan.from_dict(
        {k: plan.to_dict()[k] for k in ("target_spacing", "normalization", "crop_foreground", "labels", "modalities")}
    )
    assert old.intensity == () and old.slow_axis is None and old.label_interp == "nearest"
    chain = preprocessing(with_label=False, **old.transform_kwargs())
    assert isinstance(chain({"image": str(info.cases[0].images[0])})["image"], torch.Tensor)
