"""Planned training settings and their overrides (pipeline.preprocessing.settings)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_msd_cases

from pipeline.config import ConfigError, from_dict
from pipeline.core.dataset import read_dataset
from pipeline.preprocessing.fingerprint import fingerprint_dataset
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.planner import make_plan
from pipeline.preprocessing.settings import format_settings, plan_settings, resolve, values
from pipeline.preprocessing.transforms import preprocessing


def write_msd(root: Path, shape: tuple[int, ...], spacing: tuple[float, ...], n: int = 3) -> Path:
    """``n`` cases of ``shape`` voxels at ``spacing`` mm, a blob labelled 1 in each."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(n):
        image = rng.normal(100, 10, shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[tuple(slice(s // 4, max(s // 4 + 1, 3 * s // 4)) for s in shape)] = 1
        image[label == 1] += 50
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {"name": "t", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "fg"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def plan_for(root: Path, params: dict | None = None) -> Plan:
    cfg = from_dict({"preprocess": {"workers": 1}, **(params or {})})
    info = read_dataset(root, "msd")
    fingerprints, samples = fingerprint_dataset(info, 1, 1000)
    return make_plan(info, fingerprints, samples, cfg.preprocess, cfg)


def test_anisotropic_spacing_gives_the_network_per_axis_pooling(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "thick", (64, 64, 12), (0.8, 0.8, 4.0))
    planned = plan_for(root)
    assert planned.setting("dims") == 2 and planned.setting("slice_axis") == 2  # thick slices: 2D, said why
    assert "anisotropic" in planned.settings["dims"]["reason"]
    forced = plan_for(root, {"sample": {"mode": "3d"}})
    strides, kernels = forced.setting("strides"), forced.setting("kernel_sizes")
    assert forced.settings["dims"]["source"] == "overridden"
    assert strides[0] == [2, 2, 1] and kernels[0] == [3, 3, 1]  # the thick axis waits, flat kernels first
    assert any(s[2] == 2 for s in strides[1:])  # ... and is pooled once the others are as coarse
    assert len(kernels) == forced.setting("depth") + 1 == len(strides) + 1


def test_one_slice_dataset_plans_2d_and_never_resamples_that_axis(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "flat", (40, 48, 1), (1.0, 1.0, 1.0))
    plan = plan_for(root, {"preprocess": {"target_spacing": [1.6, 1.6, 2.5], "workers": 1}})
    assert plan.setting("dims") == 2 and plan.setting("slice_axis") == 2
    assert "one slice" in plan.settings["dims"]["reason"]
    assert plan.single_axis == 2 and plan.target_spacing[2] == 1.0
    assert len(plan.setting("patch_size")) == 2
    chain = preprocessing(**plan.transform_kwargs())
    out = chain({"image": str(root / "imagesTr" / "c0.nii.gz"), "label": str(root / "labelsTr" / "c0.nii.gz")})
    assert out["image"].shape[-1] == 1 and out["image"].shape[1] == 25  # 40 mm at 1.6 mm; one slice kept
    assert Plan.from_dict(plan.to_dict()) == plan


def test_an_override_wins_and_is_reported_as_overridden(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "iso", (32, 40, 24), (1.0, 1.0, 1.0))
    planned = plan_for(root)
    assert planned.setting("dims") == 3 and planned.settings["batch_size"]["source"] == "planned"
    params = {"train": {"batch_size": 3, "epochs": 7, "model": {"depth": 2}}, "sample": {"patch_size": [16, 16, 16]}}
    plan = plan_for(root, params)
    for name, value in (("batch_size", 3), ("epochs", 7), ("depth", 2), ("patch_size", [16, 16, 16])):
        assert plan.settings[name] == {"value": value, "source": "overridden", "reason": "set in the config"}
    assert len(plan.setting("strides")) == 2
    block = format_settings(plan.settings)
    assert "batch_size" in block and "[overridden]" in block and "[planned]" in block
    # a later config change takes effect in the stages that resolve the plan, also reported as overridden
    later = resolve(planned, from_dict({"train": {"iters_per_epoch": 11}}))
    assert later["iters_per_epoch"]["value"] == 11 and later["iters_per_epoch"]["source"] == "overridden"
    assert values(resolve(planned, from_dict({}))) == values(planned.settings)
    with pytest.raises(ConfigError, match="sample.patch_size"):
        plan_for(root, {"sample": {"patch_size": [16, 16]}})  # 2 values for a 3D plan


def test_same_params_give_the_same_epoch_count_without_any_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = {
        "median_spacing": [1.0, 1.0, 1.0],
        "median_preprocessed_shape": [36.0, 50.0, 35.0],
        "n_cases": 180,
        "dataset_voxels": 180 * 63_000.0,
        "single_axis": None,
        "slow_axis": None,
    }
    cfg = from_dict({"train": {"target_minutes": 20}})
    first = plan_settings(summary, [1.0, 1.0, 1.0], cfg)

    def no_clock() -> float:
        raise AssertionError("planning must not read a clock")

    for name in ("time", "monotonic", "perf_counter", "process_time"):
        monkeypatch.setattr(time, name, no_clock)
    second = plan_settings(summary, [1.0, 1.0, 1.0], cfg)  # another machine: any speed, same plan
    assert second == first
    assert first["epochs"]["source"] == "planned" and 10 <= first["epochs"]["value"] <= 1000
    longer = plan_settings(summary, [1.0, 1.0, 1.0], from_dict({"train": {"target_minutes": 40}}))
    assert longer["epochs"]["value"] == pytest.approx(2 * first["epochs"]["value"], abs=1)
    # more output classes cost more per step (the summary's n_classes; a plan written without it: 2)
    many = plan_settings({**summary, "n_classes": 14}, [1.0, 1.0, 1.0], cfg)
    assert many["epochs"]["value"] < first["epochs"]["value"]
    assert plan_settings({**summary, "n_classes": 2}, [1.0, 1.0, 1.0], cfg) == first


def test_structure_thickness_measures_a_ribbon_by_its_width() -> None:
    from pipeline.preprocessing.fingerprint import structure_thickness

    label = np.zeros((60, 40, 1), np.uint8)
    label[5:55, 10:13] = 1  # a ribbon 3 voxels wide
    label[5:35, 20:36] = 2  # a block 16 wide
    thickness = structure_thickness(label, [0, 1, 2])
    assert thickness[1] == pytest.approx(3.0, rel=0.1) and thickness[2] > 10
    assert structure_thickness(np.zeros_like(label), [0, 1]) == {}


def test_thin_structures_plan_a_full_resolution_level_and_its_cost(tmp_path: Path) -> None:
    thick = plan_for(write_msd(tmp_path / "thick", (48, 48, 48), (1.0, 1.0, 1.0)))  # a 24-voxel cube
    root = write_msd(tmp_path / "thin", (48, 48, 48), (1.0, 1.0, 1.0))
    for path in sorted((root / "labelsTr").iterdir()):  # the cube becomes a 2-voxel-thick plate
        label = np.zeros((48, 48, 48), np.uint8)
        label[12:36, 12:36, 23:25] = 1
        nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    thin = plan_for(root)
    assert thick.setting("full_resolution_width") == 0
    assert thin.setting("full_resolution_width") == 8  # base_width 16 // 2
    assert "full resolution" in thin.settings["full_resolution_width"]["reason"]
    assert thin.setting("epochs") < thick.setting("epochs")  # the extra level costs time, so fewer epochs
    forced = plan_for(root, {"train": {"model": {"full_resolution_width": 0}}})
    entry = forced.settings["full_resolution_width"]
    assert entry == {"value": 0, "source": "overridden", "reason": "set in the config"}
    other = plan_for(root, {"train": {"model": {"name": "dynunet"}}})
    assert other.setting("full_resolution_width") == 0  # DynUNet's first level is full resolution already


def _two_part_structure(root: Path, nested: bool) -> Path:
    """Four cases of two classes: 1 in front of 2 along posterior-anterior (or 2 inside 1 when ``nested``),
    two of them stored with flipped x and y axes (LPS-like), so only RAS coordinates show the order."""
    cases = []
    for i in range(4):
        label = np.zeros((24, 32, 20), np.uint8)
        shift = i  # positions vary from case to case; the order does not
        if nested:
            label[4 + shift : 20, 4:28, 4:16] = 1
            label[8 + shift : 16, 10:22, 7:13] = 2
        else:
            label[6 + shift : 16, 18:28, 5:15] = 1  # anterior
            label[6 + shift : 16, 4 + shift : 14, 5:15] = 2  # posterior
        affine = np.eye(4)
        if i % 2:  # stored L-R and P-A reversed: the same anatomy
            label = label[::-1, ::-1].copy()
            affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        image = np.random.default_rng(i).normal(0, 1, label.shape).astype(np.float32) + label
        cases.append((image, label, affine))
    return write_msd_cases(root, cases, {"0": "background", "1": "anterior", "2": "posterior"})


def test_axes_along_which_classes_lie_in_a_fixed_order_are_not_flipped(tmp_path: Path) -> None:
    ordered = plan_for(_two_part_structure(tmp_path / "ordered", nested=False))
    entry = ordered.settings["flip_axes"]
    assert entry["value"] == [0, 2] and entry["source"] == "planned"  # never posterior-anterior
    assert "classes 1 and 2 along posterior-anterior (100% of cases" in entry["reason"]
    nested = plan_for(_two_part_structure(tmp_path / "nested", nested=True))
    assert nested.setting("flip_axes") == [0, 1, 2]  # one inside the other: no side to swap
    forced = plan_for(tmp_path / "ordered", {"train": {"flip_axes": [0, 1]}})
    assert forced.settings["flip_axes"] == {"value": [0, 1], "source": "overridden", "reason": "set in the config"}


def test_test_time_mirroring_follows_the_planned_flips_unless_set() -> None:
    from pipeline.training.trainer import inference_settings

    assert inference_settings({"mirror_tta": True, "mirror_axes": None}, [0, 2])["mirror_axes"] == [0, 2]
    assert inference_settings({"mirror_tta": True, "mirror_axes": [1]}, [0, 2])["mirror_axes"] == [1]


def _pictures(root: Path, ribbon: bool) -> Path:
    """Three 1024x1024 one-slice pictures: a 512-pixel square (thick) or a 3-pixel ribbon (thin) labelled 1."""
    write_msd(root, (1024, 1024, 1), (1.0, 1.0, 1.0))
    if ribbon:
        for path in sorted((root / "labelsTr").iterdir()):
            label = np.zeros((1024, 1024, 1), np.uint8)
            label[100:900, 500:503] = 1
            nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    return root


def test_large_pictures_trade_resolution_for_training_steps_only_for_thick_structures(tmp_path: Path) -> None:
    from pipeline.preprocessing.planner import COARSE_MIN_VOXELS
    from pipeline.preprocessing.settings import MIN_STEPS, training_steps

    budget = {"train": {"target_minutes": 15}}
    full = plan_for(_pictures(tmp_path / "thick", ribbon=False), {"train": {"target_minutes": 15, "epochs": 30}})
    assert full.target_spacing == (1.0, 1.0, 1.0)  # an explicit epoch count: the plan does not trade anything
    assert "lowered" not in full.settings["batch_size"]["reason"]
    thick = plan_for(tmp_path / "thick", budget)
    factor = thick.target_spacing[0]
    assert factor > 1 and thick.target_spacing[1] == factor and thick.target_spacing[2] == 1.0  # one slice kept
    reason = thick.settings["target_spacing"]["reason"]
    assert thick.settings["target_spacing"]["source"] == "planned" and "training steps" in reason
    assert training_steps(thick.settings) >= MIN_STEPS and 512 / factor >= COARSE_MIN_VOXELS
    assert max(thick.setting("patch_size")) <= 1024 / factor + 32  # the whole coarser picture, not a crop
    # the same pictures with a 3-pixel ribbon keep their resolution and crop the patch instead
    thin = plan_for(_pictures(tmp_path / "thin", ribbon=True), budget)
    assert thin.target_spacing == (1.0, 1.0, 1.0)
    assert "cropped" in thin.settings["patch_size"]["reason"]
    assert min(thin.setting("patch_size")) >= 512  # never below half the median picture
    explicit = plan_for(tmp_path / "thin", {"train": {"target_minutes": 15}, "sample": {"patch_size": [256, 256]}})
    assert explicit.setting("patch_size") == [256, 256] and explicit.target_spacing == (1.0, 1.0, 1.0)


def test_many_cases_shorten_the_epochs_instead_of_overrunning_the_budget() -> None:
    summary = {  # 3,000 pictures of 256x256 (a multi-channel slice dataset)
        "median_spacing": [1.0, 1.0, 1.0],
        "median_preprocessed_shape": [256.0, 256.0, 1.0],
        "n_cases": 3000,
        "dataset_voxels": 3000 * 65536.0,
        "single_axis": 2,
        "slow_axis": None,
    }
    settings = plan_settings(summary, [1.0, 1.0, 1.0], from_dict({"train": {"target_minutes": 15}}))
    epochs, iters = settings["epochs"]["value"], settings["iters_per_epoch"]["value"]
    per_epoch = float(settings["epochs"]["reason"].split("estimated ")[1].split(" s/epoch")[0])
    assert epochs >= 10 and epochs * per_epoch <= 15 * 60 * 1.05  # ten epochs, inside the budget
    assert iters < 3000 / settings["batch_size"]["value"]  # not one pass over the cases per epoch
    assert "10 epochs in the budget" in settings["iters_per_epoch"]["reason"]
