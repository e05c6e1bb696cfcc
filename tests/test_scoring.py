"""Tests for pipeline.evaluation.scoring and pipeline.tools.score: masks written by another program (SimpleITK)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipeline.evaluation.compare import compare, load_per_case
from pipeline.tools.score import main

LABELS = {"0": "background", "1": "organ", "2": "lesion"}
SHAPE = (26, 22, 12)
AFFINES = {  # anisotropic; c1 flipped like an LPS scan; c2 with an origin
    "c0": np.diag([1.0, 1.5, 2.5, 1.0]),
    "c1": np.diag([-1.2, -1.0, 2.0, 1.0]),
    "c2": np.array([[0.9, 0, 0, -40.0], [0, 0.9, 0, 12.0], [0, 0, 3.0, 7.5], [0, 0, 0, 1]]),
}
SUFFIXES = {"c0": ".mha", "c1": ".nrrd", "c2": ".nii.gz"}


def _reference(cid: str) -> np.ndarray:
    """An ellipsoid organ, and a box lesion except in c2 (lesion empty on both sides there)."""
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    k = int(cid[1])
    organ = ((x - 12 - k) / 7.0) ** 2 + ((y - 11) / (5.0 + k)) ** 2 + ((z - 6) / 3.5) ** 2 <= 1
    ref = organ.astype(np.uint8)
    if cid != "c2":
        ref[10 + k : 14 + k, 9:13, 5:8] = 2
    return ref


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for cid, affine in AFFINES.items():
        ref = _reference(cid)
        image = rng.normal(100, 10, SHAPE).astype(np.float32) + 40 * ref
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(ref, affine), root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "labels": LABELS, "training": training}))
    return root


def _other_program(dataset: Path, out: Path, shift: int = 1, origin_offset: float = 0.0) -> Path:
    """What nnU-Net and ITK-based tools do: read the reference with SimpleITK, write a mask on its grid."""
    out.mkdir(parents=True, exist_ok=True)
    for cid, suffix in SUFFIXES.items():
        ref = sitk.ReadImage(str(dataset / "labelsTr" / f"{cid}.nii.gz"))
        moved = np.roll(sitk.GetArrayFromImage(ref), shift, axis=2)  # (z, y, x): one voxel along x
        pred = sitk.GetImageFromArray(moved)
        pred.CopyInformation(ref)
        if origin_offset and cid == "c1":
            pred.SetOrigin(tuple(o + origin_offset for o in ref.GetOrigin()))
        sitk.WriteImage(pred, str(out / f"{cid}_seg{suffix}"), useCompression=True)
    return out


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b`` (surface: mask minus erosion)."""
    edge_a = a & ~ndimage.binary_erosion(a)
    edge_b = b & ~ndimage.binary_erosion(b)
    return ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]


def _expected(cid: str, k: int) -> tuple[float, float]:
    """Dice and HD95 of class ``k`` computed here, from the construction (reference moved one voxel along x)."""
    ref = _reference(cid) == k
    pred = np.roll(_reference(cid), 1, axis=0) == k
    spacing = tuple(float(s) for s in np.abs(np.diag(AFFINES[cid])[:3]))
    dice = 2 * np.count_nonzero(ref & pred) / (np.count_nonzero(ref) + np.count_nonzero(pred))
    d1, d2 = _surface_distances(pred, ref, spacing), _surface_distances(ref, pred, spacing)
    return dice, max(np.percentile(d1, 95), np.percentile(d2, 95))


def test_scores_another_programs_masks_like_an_independent_computation(dataset: Path, tmp_path: Path) -> None:
    pred = _other_program(dataset, tmp_path / "pred")
    out = tmp_path / "score"
    assert main(["--pred", str(pred), "--ref", str(dataset), "--out", str(out), "--n-bootstrap", "50"]) == 0
    per_case = pd.read_csv(out / "per_case.csv")
    assert sorted(per_case.case_id.unique()) == ["c0", "c1", "c2"] and len(per_case) == 6
    for row in per_case.itertuples():
        if row.case_id == "c2" and row.class_name == "lesion":  # empty on both sides: the default policy
            assert row.dice == 1.0 and np.isnan(row.hd95_mm)
            continue
        dice, hd95 = _expected(row.case_id, row.class_index)
        assert row.dice == pytest.approx(dice, abs=1e-12), row
        assert row.hd95_mm == pytest.approx(hd95, abs=1e-6), row
        assert row.prediction_file == f"{row.case_id}_seg{SUFFIXES[row.case_id]}"
    assert 0.5 < per_case.dice.min() < 1.0  # the shift really changed something
    summary = json.loads((out / "summary.json").read_text())
    assert summary["empty_policy"]["both_empty"] == 1.0
    assert summary["mean_dice"] == pytest.approx(per_case.groupby("class_name").dice.mean().mean())
    report = (out / "report.html").read_text()
    assert report.count("<img") >= 3 and "overlay best" in report  # the references came with their images

    # the same references given as a bare folder of masks (label names from the dataset.json above it)
    out2 = tmp_path / "score_folder"
    assert main(["--pred", str(pred), "--ref", str(dataset / "labelsTr"), "--out", str(out2)]) == 0
    again = pd.read_csv(out2 / "per_case.csv")
    assert np.allclose(again.dice, per_case.dice) and set(again.class_name) == {"organ", "lesion"}


def test_prediction_off_the_reference_grid_is_refused_before_writing(dataset: Path, tmp_path: Path, capsys) -> None:
    pred = _other_program(dataset, tmp_path / "pred", origin_offset=2.0)
    out = tmp_path / "score"
    assert main(["--pred", str(pred), "--ref", str(dataset), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c1_seg.nrrd" in err[0] and "affine differs" in err[0] and "2 mm" in err[0]
    assert not out.exists()


def test_missing_and_unmatched_predictions(dataset: Path, tmp_path: Path, capsys) -> None:
    pred = _other_program(dataset, tmp_path / "pred")
    (pred / "c2_seg.nii.gz").unlink()
    out = tmp_path / "score"
    assert main(["--pred", str(pred), "--ref", str(dataset), "--out", str(out), "--missing", "error"]) == 2
    assert "no prediction for 1 reference case(s): c2" in capsys.readouterr().err and not out.exists()
    assert main(["--pred", str(pred), "--ref", str(dataset), "--out", str(out)]) == 0  # default: skip, counted
    skipped = json.loads((out / "summary.json").read_text())
    assert skipped["n_cases"] == 2 and skipped["n_references_not_scored"] == 1
    assert set(pd.read_csv(out / "per_case.csv").case_id) == {"c0", "c1"}
    assert main(["--pred", str(pred), "--ref", str(dataset), "--out", str(out), "--missing", "empty"]) == 0
    per_case = pd.read_csv(out / "per_case.csv").set_index(["case_id", "class_name"])
    assert per_case.loc[("c2", "organ"), "dice"] == 0.0 and per_case.loc[("c2", "lesion"), "dice"] == 1.0
    assert json.loads((out / "summary.json").read_text())["n_missing_predictions"] == 1
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(pred / "stranger.mha"))
    assert main(["--pred", str(pred), "--ref", str(dataset), "--out", str(tmp_path / "x"), "--missing", "skip"]) == 2
    assert "stranger.mha: no reference for case 'stranger'" in capsys.readouterr().err


def test_compare_pits_two_score_folders(dataset: Path, tmp_path: Path) -> None:
    shifted = _other_program(dataset, tmp_path / "shifted", shift=1)
    exact = _other_program(dataset, tmp_path / "exact", shift=0)
    for name, folder in (("a", shifted), ("b", exact)):
        assert main(["--pred", str(folder), "--ref", str(dataset), "--out", str(tmp_path / name)]) == 0
    table, pairs = compare(load_per_case(tmp_path / "a"), load_per_case(tmp_path / "b"), ["dice"], 100, 0)
    assert len(pairs) == 6
    organ = table[(table.class_name == "organ") & (table.metric == "dice")].iloc[0]
    assert organ["mean_diff"] > 0.05  # the exact masks beat the shifted ones on every case


def test_png_masks_of_2d_pictures_are_scored_in_2d_pixels(tmp_path: Path) -> None:
    """Another tool's PNG masks of 2D pictures: contours in 2D, distances in pixels, summary says so."""
    from PIL import Image

    from pipeline.core.readers import ReadError, read_array

    ref = np.zeros((40, 32), np.uint8)
    ref[8:30, 6:20] = 1
    pred = np.roll(ref, 2, axis=1)
    for folder, mask in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(mask).save(tmp_path / folder / "cxr_000.png")
    try:
        read_array(tmp_path / "ref" / "cxr_000.png")
    except ReadError as err:
        pytest.skip(f"the reader does not read PNG yet ({err})")
    out = tmp_path / "score"
    assert main(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0
    row = pd.read_csv(out / "per_case.csv").iloc[0]
    r, p = ref.astype(bool), pred.astype(bool)
    d1, d2 = _surface_distances(p, r, (1.0, 1.0)), _surface_distances(r, p, (1.0, 1.0))
    hd95 = max(np.percentile(d1, 95), np.percentile(d2, 95))
    assert row.dice == pytest.approx(2 * (r & p).sum() / (r.sum() + p.sum()), abs=1e-12)
    assert row.hd95_mm == pytest.approx(hd95, abs=1e-9)
    assert json.loads((out / "summary.json").read_text())["physical_spacing"] is False


def test_jpeg_reference_masks_are_scored_as_label_values(tmp_path: Path) -> None:
    """Reference masks shipped as JPEG (0/255 with compression noise at the edges) are scored as 0/255 masks:
    a prediction equal to the mask they encode scores Dice ~1 with the one foreground class, not ~30 classes."""
    from PIL import Image

    yy, xx = np.mgrid[:64, :80]
    mask = (((yy - 30) ** 2 + (xx - 40) ** 2) < 20**2).astype(np.uint8) * 255
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
    Image.fromarray(mask).save(tmp_path / "ref" / "p1.jpg", quality=75)
    Image.fromarray(mask).save(tmp_path / "pred" / "p1.png")
    out = tmp_path / "score"
    assert main(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "per_case.csv")
    assert table.class_index.tolist() == [255]
    assert table.dice.iloc[0] > 0.995


def test_references_beside_their_scans_as_datasets_come(tmp_path: Path) -> None:
    """``--ref`` a folder of pictures beside their ``<case>_mask`` files, in category sub-folders as BUSI comes:
    read as the dataset it is (it was taken for a folder of masks, each picture a second mask of its case)."""
    from PIL import Image

    mask = np.zeros((24, 32), np.uint8)
    mask[6:18, 8:20] = 255
    for kind in ("benign", "normal"):
        for folder in (tmp_path / "ref" / kind, tmp_path / "pred", tmp_path / f"pred_{kind}"):
            folder.mkdir(parents=True, exist_ok=True)
        for i in (1, 2):
            case = f"{kind} ({i})"
            Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(tmp_path / "ref" / kind / f"{case}.png")
            Image.fromarray(mask).save(tmp_path / "ref" / kind / f"{case}_mask.png")
            for pred in (tmp_path / "pred", tmp_path / f"pred_{kind}"):
                Image.fromarray(mask).save(pred / f"{case}.png")
    for pred, ref, n in (("pred", tmp_path / "ref", 4), ("pred_benign", tmp_path / "ref" / "benign", 2)):
        out = tmp_path / f"score_{ref.name}"
        assert main(["--pred", str(tmp_path / pred), "--ref", str(ref), "--out", str(out)]) == 0
        table = pd.read_csv(out / "per_case.csv")
        assert len(table) == n and (table.dice == 1.0).all()


def test_masks_named_as_lits_and_bids_name_them_pair_with_predictions_named_as_predict_names_them(
    tmp_path: Path,
) -> None:
    """A folder of references ``segmentation-0.nii`` (LiTS) or ``sub-01_ses-1_dseg.nii.gz`` (BIDS) against predictions
    ``volume-0.nii.gz`` and ``sub-01_ses-1.nii.gz`` (as predict names them): paired (before: no reference)."""
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:6, 2:6, 1:3] = 1
    names = (("segmentation-0.nii", "volume-0.nii.gz"), ("sub-01_ses-1_dseg.nii.gz", "sub-01_ses-1.nii.gz"))
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
    for ref, pred in names:
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "ref" / ref))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "pred" / pred))
    out = tmp_path / "score"
    assert main(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "per_case.csv")
    assert sorted(table.case_id) == ["0", "sub-01_ses-1"] and (table.dice == 1.0).all()
