"""pipeline.core.io: paths that cannot leave their folder, geometry-only NIfTI, atomic writes that follow the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core import io
from pipeline.inference.model_folder import META, WEIGHTS, save_model_folder
from pipeline.inference.predictor import save_probabilities
from pipeline.sampling.locations import build_samples

PATIENT = "Doe^Jane 1970-01-01 MRN 12345"


UNSAFE = ["../x", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", ".hidden", "", "..", "a\0b"]


@pytest.mark.parametrize("name", UNSAFE)
def test_inside_refuses_names_that_are_not_plain(tmp_path, name):
    with pytest.raises(io.UnsafePathError, match="not a plain file name"):
        io.inside(tmp_path / "out", "images", name)


def test_inside_keeps_plain_names_under_the_root(tmp_path):
    for name in ("case_001.nii.gz", "tumour (core)", "CD4+", "a$b", "x-1.2"):
        assert io.inside(tmp_path, "images", name) == tmp_path / "images" / name


def test_a_case_id_that_climbs_out_writes_nothing_outside_its_folder(tmp_path):
    """sampling: a case id ``../../evil`` used to place ``locations/../../evil.npz`` beside the output folder."""
    pre, out = tmp_path / "pre", tmp_path / "out"
    (pre / "labels").mkdir(parents=True)
    label = np.zeros((1, 4, 4, 4), np.uint8)
    label[0, 1:3, 1:3, 1:3] = 1
    np.save(pre / "labels" / "good.npy", label)
    np.save(tmp_path / "evil.npy", label)  # what pre/labels/../../evil.npy points at
    with pytest.raises(io.UnsafePathError, match="'../../evil.npz'"):
        build_samples(pre, out, {"good": "train", "../../evil": "train"}, 2, "3d", 2, 0)
    assert not (tmp_path / "evil.npz").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"evil.npy", "out", "pre"}


def _scan_with_patient_data(shape=(6, 5, 4)) -> nib.Nifti1Image:
    affine = np.array([[0, 0, 2.5, -10], [-0.8, 0, 0, 20], [0, 0.9, 0, 5], [0, 0, 0, 1]], float)
    img = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), affine)
    img.set_sform(affine, 2)
    img.set_qform(affine, 1)
    h = img.header
    h["descrip"] = PATIENT.encode()
    h["aux_file"] = b"MRN12345"
    h["db_name"] = b"Doe^Jane"
    h["intent_name"] = b"Jane"
    h.set_xyzt_units("mm", "sec")
    h.extensions.append(nib.nifti1.Nifti1Extension(6, PATIENT.encode()))  # a comment extension
    return img


def _written_header_bytes(path: Path) -> bytes:
    import gzip

    return gzip.decompress(path.read_bytes())[:2048]


def _assert_geometry_only(written: nib.Nifti1Image, reference: nib.Nifti1Image, path: Path) -> None:
    h = written.header
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        assert h[field].item() == b"", field
    assert len(h.extensions) == 0
    assert b"Doe" not in _written_header_bytes(path) and b"12345" not in _written_header_bytes(path)
    np.testing.assert_allclose(written.affine, reference.affine)
    for coded in ("get_sform", "get_qform"):
        got, code = getattr(h, coded)(coded=True)
        want, want_code = getattr(reference.header, coded)(coded=True)
        assert int(code) == int(want_code)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert h.get_xyzt_units()[0] == "mm"


def test_save_like_writes_geometry_and_no_patient_data(tmp_path):
    reference = _scan_with_patient_data()
    labels = (np.asarray(reference.dataobj) % 3).astype(np.uint8)
    out = io.save_like(labels, reference, tmp_path / "case.nii.gz")
    written = nib.load(str(out))
    _assert_geometry_only(written, reference, out)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_probabilities_carry_no_patient_data(tmp_path):
    reference = _scan_with_patient_data()
    probs = np.zeros((*reference.shape, 2), np.uint8)
    probs[..., 0] = 255
    out = save_probabilities(probs, reference, tmp_path / "case_probabilities.nii.gz")
    written = nib.load(str(out))
    _assert_geometry_only(written, reference, out)
    np.testing.assert_allclose(written.get_fdata()[..., 0], 1.0)


@pytest.fixture()
def umask():
    """Run a block under a given umask and restore the old one."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    reference = _scan_with_patient_data()
    written = [
        io.save_like(np.zeros(reference.shape, np.uint8), reference, tmp_path / "pred" / "case.nii.gz"),
        io.write_text(tmp_path / "metrics" / "report.html", "<html></html>"),
        io.write_json(tmp_path / "metrics" / "summary.json", {"mean_dice": 0.5}),
        io.write_csv(tmp_path / "metrics" / "per_case.csv", pd.DataFrame({"a": [1]})),
    ]
    folder = save_model_folder(tmp_path / "model", torch.nn.Linear(2, 1), {"model": {"name": "x"}})
    written += [folder / WEIGHTS, folder / META]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(mode) for p in written}
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = io.write_text(tmp_path / "a.txt", "old")

    def broken(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.write_atomic(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
