"""Tests for the embedded synthetic MSD-style dataset (pipeline.core.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.synthetic import make_synthetic_dataset
from pipeline.core.synthetic_case import ORGAN_OFFSET_MM

SPACING = (0.8, 0.8, 2.5)
_AXIS_OF_CODE = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    out = make_synthetic_dataset(root, n_cases=24, seed=0, spacing=SPACING)
    assert out == root
    return root


def _cases(root: Path) -> list[tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    meta = json.loads((root / "dataset.json").read_text())
    return [(nib.load(root / e["image"]), nib.load(root / e["label"])) for e in meta["training"]]


def test_layout_and_dataset_json(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    for key in ("name", "description", "tensorImageSize", "modality", "labels", "numTraining", "training", "test"):
        assert key in meta
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "MR"}
    assert set(meta["labels"]) == {"0", "1", "2"} and meta["labels"]["0"] == "background"
    assert meta["numTraining"] == len(meta["training"]) == 24
    assert meta["test"] == []
    for i, entry in enumerate(meta["training"]):
        assert entry == {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        assert (dataset / entry["image"]).is_file() and (dataset / entry["label"]).is_file()


def test_no_temp_files_left(dataset: Path) -> None:
    expected = {"dataset.json"} | {f"{d}/case_{i:03d}.nii.gz" for d in ("imagesTr", "labelsTr") for i in range(24)}
    found = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    assert found == expected


def test_headers_and_dtypes(dataset: Path) -> None:
    dtypes = set()
    for img, lab in _cases(dataset):
        assert img.shape == lab.shape and len(img.shape) == 3
        np.testing.assert_allclose(img.affine, lab.affine)
        for h in (img.header, lab.header):
            assert int(h["sform_code"]) == 1 and int(h["qform_code"]) == 1
            np.testing.assert_allclose(h.get_sform(), h.get_qform(), atol=1e-4)
        assert lab.get_data_dtype() == np.uint8
        dtypes.add(np.dtype(img.get_data_dtype()))
        # header zooms are the configured spacing, permuted as stored
        codes = nib.aff2axcodes(img.affine)
        expected = [SPACING[_AXIS_OF_CODE[c]] for c in codes]
        np.testing.assert_allclose(img.header.get_zooms()[:3], expected, rtol=1e-6)
        np.testing.assert_allclose(lab.header.get_zooms()[:3], expected, rtol=1e-6)
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.float32)}


def test_both_classes_present_and_touching(dataset: Path) -> None:
    six = ndimage.generate_binary_structure(3, 1)
    for _, lab in _cases(dataset):
        arr = np.asarray(lab.dataobj)
        assert set(np.unique(arr)) == {0, 1, 2}
        near_organ = ndimage.binary_dilation(arr == 1, structure=six)
        assert np.any(near_organ & (arr == 2)), "lesion does not touch the organ"
        assert (arr == 1).sum() > (arr == 2).sum() > 50


def test_orientations_and_canonical_anatomy(dataset: Path) -> None:
    codes = set()
    offsets = []
    for img, lab in _cases(dataset):
        codes.add(nib.aff2axcodes(img.affine))
        can = nib.as_closest_canonical(lab)
        assert nib.aff2axcodes(can.affine) == ("R", "A", "S")
        arr = np.asarray(can.dataobj)
        com = np.array(ndimage.center_of_mass(arr == 1))
        centre = (np.array(arr.shape) - 1) / 2.0
        world = nib.affines.apply_affine(can.affine, np.stack([com, centre]))
        offsets.append(world[0] - world[1])
        # canonical image matches canonical label grid
        np.testing.assert_allclose(nib.as_closest_canonical(img).affine, can.affine)
    assert len(codes) >= 2
    offsets = np.array(offsets)
    # organ sits right-anterior of the field-of-view centre in every case (world space)
    assert np.all(offsets[:, 0] > 0) and np.all(offsets[:, 1] > 0)
    assert np.all(np.abs(offsets - np.array(ORGAN_OFFSET_MM)) < 8.0)


def test_determinism(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", n_cases=3, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", n_cases=3, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", n_cases=3, seed=8)
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    differs = False
    for (ia, la), (ib, lb), (ic, _lc) in zip(_cases(a), _cases(b), _cases(c), strict=True):
        np.testing.assert_array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))
        np.testing.assert_array_equal(np.asarray(la.dataobj), np.asarray(lb.dataobj))
        np.testing.assert_array_equal(ia.affine, ib.affine)
        assert ia.header.binaryblock == ib.header.binaryblock
        assert la.header.binaryblock == lb.header.binaryblock
        if ia.shape != ic.shape or not np.array_equal(np.asarray(ia.dataobj), np.asarray(ic.dataobj)):
            differs = True
        assert not np.allclose(ia.affine, ic.affine)
    assert differs
    # files themselves are byte-identical (no gzip timestamps)
    for rel in ("imagesTr/case_000.nii.gz", "labelsTr/case_002.nii.gz"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_custom_spacing(tmp_path: Path) -> None:
    spacing = (1.0, 1.2, 3.0)
    root = make_synthetic_dataset(tmp_path / "s", n_cases=4, seed=1, spacing=spacing)
    for img, _ in _cases(root):
        codes = nib.aff2axcodes(img.affine)
        np.testing.assert_allclose(img.header.get_zooms()[:3], [spacing[_AXIS_OF_CODE[k]] for k in codes], rtol=1e-6)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "x", n_cases=0)
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "y", n_cases=1, spacing=(1.0, -1.0, 1.0))
