"""DICOM series folders as volumes (core.dicom_series, core.dicom): round trips, refusals, series rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA
from dicom_series import oblique_image, write_series

from pipeline.config import DicomConfig
from pipeline.core import dicom, dicom_series, readers
from pipeline.core.dicom_series import DicomError

HIPPOCAMPUS = SHARED_DATA / "msd_hippocampus" / "imagesTr" / "hippocampus_033.nii.gz"  # uint8, 33x48x38


def _nifti(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def test_series_round_trips_to_the_nifti_it_came_from(tmp_path: Path) -> None:
    image = oblique_image()
    ref, ref_header = readers.read_array(_nifti(image, tmp_path / "ref.nii.gz"))
    data, header = dicom.read_array(write_series(image, tmp_path / "series"))
    assert data.shape == ref.shape == (12, 10, 6)
    np.testing.assert_array_equal(data, ref)
    np.testing.assert_allclose(header.affine, ref_header.affine, atol=1e-4)  # NIfTI stores float32
    np.testing.assert_allclose(header.spacing, (0.7, 0.9, 2.5), atol=1e-6)
    head_only = dicom.read_header(tmp_path / "series")
    assert (head_only.shape, head_only.spacing, head_only.dtype) == (header.shape, header.spacing, "int16")
    np.testing.assert_array_equal(head_only.affine, header.affine)


@pytest.mark.skipif(not HIPPOCAMPUS.exists(), reason="shared data not available")
def test_hippocampus_series_round_trips(tmp_path: Path) -> None:
    image = sitk.Cast(sitk.ReadImage(str(HIPPOCAMPUS)), sitk.sitkInt16)
    ref, ref_header = readers.read_array(HIPPOCAMPUS)
    data, header = dicom.read_array(write_series(image, tmp_path / "series"))
    np.testing.assert_array_equal(data, ref)
    np.testing.assert_allclose(header.affine, ref_header.affine, atol=1e-5)
    assert header.shape == ref_header.shape


def test_slices_are_sorted_by_position_not_by_file_name(tmp_path: Path) -> None:
    image = oblique_image()
    folder = write_series(image, tmp_path / "series")
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):  # reverse the file names: slice 0 now sorts last
        f.rename(folder / f"x{len(files) - i:03d}.dcm")
    data, _ = dicom.read_array(folder)
    np.testing.assert_array_equal(data, sitk.GetArrayFromImage(image).T)


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    folder = write_series(oblique_image(), tmp_path / "series", skip=[3])
    with pytest.raises(DicomError, match=r"missing slice\(s\): 1 between slice_002.dcm and slice_004.dcm"):
        dicom.read_array(folder)


def test_duplicate_slice_is_refused(tmp_path: Path) -> None:
    image = oblique_image()
    folder = write_series(image, tmp_path / "series", positions={3: image.TransformIndexToPhysicalPoint((0, 0, 2))})
    with pytest.raises(DicomError, match="duplicate slices: slice_002.dcm and slice_003.dcm"):
        dicom.read_header(folder)


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    image = oblique_image()
    shifted = image.TransformContinuousIndexToPhysicalPoint((0, 0, 3.4))
    folder = write_series(image, tmp_path / "series", positions={3: shifted})
    with pytest.raises(DicomError, match="uneven slice spacing"):
        dicom.read_header(folder)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    image = oblique_image()
    row = np.asarray(image.GetDirection()).reshape(3, 3)[:, 0]
    tilted = {i: np.asarray(image.TransformIndexToPhysicalPoint((0, 0, i))) + 0.5 * i * row for i in range(6)}
    folder = write_series(image, tmp_path / "series", positions=tilted)
    with pytest.raises(DicomError, match=r"gantry tilt .*\(11\.3\d degrees\)"):
        dicom.read_header(folder)


def test_mixed_slices_are_refused(tmp_path: Path) -> None:
    folder = write_series(oblique_image(), tmp_path / "series")
    other = oblique_image((12, 11, 6))
    write_series(other, tmp_path / "other")
    (tmp_path / "other" / "slice_003.dcm").replace(folder / "slice_003.dcm")  # same series UID, 11 rows
    with pytest.raises(DicomError, match="mixed series: Rows 10"):
        dicom.read_header(folder)


def test_single_slice_and_empty_folder_are_refused(tmp_path: Path) -> None:
    folder = write_series(oblique_image(), tmp_path / "series", skip=range(1, 6))
    with pytest.raises(DicomError, match="single slice"):
        dicom.read_header(folder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DicomError, match="no DICOM files"):
        dicom.read_header(tmp_path / "empty")
    assert dicom_series.is_dicom_folder(folder) and not dicom_series.is_dicom_folder(tmp_path / "empty")


def _two_series(folder: Path) -> tuple[sitk.Image, sitk.Image]:
    """A 6-slice MR 'T1 axial' and an 8-slice CT 'localizer' series, in one study, one folder."""
    mr, ct = oblique_image(seed=1), oblique_image((12, 10, 8), seed=2)
    write_series(mr, folder, series="3", modality="MR", description="T1 axial")
    write_series(ct, folder / "ct", series="4", modality="CT", description="Localizer")
    for f in (folder / "ct").iterdir():
        f.rename(folder / f"ct_{f.name}")
    (folder / "ct").rmdir()
    return mr, ct


def test_two_series_are_refused_without_a_rule_and_picked_by_one(tmp_path: Path) -> None:
    mr, ct = _two_series(tmp_path / "study")
    with pytest.raises(DicomError, match=r"mixed series: 2 series \(#3 MR 'T1 axial' \(6 files\); #4 CT"):
        dicom.read_header(tmp_path / "study")
    expected = {"mr": sitk.GetArrayFromImage(mr).T, "ct": sitk.GetArrayFromImage(ct).T}
    for rule, which in [
        (DicomConfig(modality="mr"), "mr"),
        (DicomConfig(description="^local"), "ct"),
        (DicomConfig(largest=True), "ct"),
        (DicomConfig(modality="MR", largest=True), "mr"),
    ]:
        data, _ = dicom.read_array(tmp_path / "study", rule)
        np.testing.assert_array_equal(data, expected[which], err_msg=str(rule))
    with pytest.raises(DicomError, match="no series matches modality PT"):
        dicom.read_header(tmp_path / "study", DicomConfig(modality="PT"))


def test_process_rule_applies_to_folders_of_studies(tmp_path: Path) -> None:
    mr, _ = oblique_image(seed=1), None
    write_series(mr, tmp_path / "patient" / "study1" / "t1", series="1", description="T1 MPRAGE")
    write_series(oblique_image(seed=3), tmp_path / "patient" / "study1" / "t2", series="2", description="T2 FLAIR")
    try:
        dicom_series.set_series_rule(DicomConfig(description="mprage"))
        data, _ = dicom.read_array(tmp_path / "patient")
    finally:
        dicom_series.set_series_rule(None)
    np.testing.assert_array_equal(data, sitk.GetArrayFromImage(mr).T)
    with pytest.raises(DicomError, match="mixed series: 2 series"):
        dicom.read_array(tmp_path / "patient")


def _label(image: sitk.Image, path: Path) -> Path:
    label = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(image)
    label[2:6, 3:7, 1:4] = 1
    sitk.WriteImage(label, str(path))
    return path


def test_validate_and_the_monai_loader_read_series_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A manifest dataset whose images are DICOM folders: validate names the broken series' folder."""
    from pipeline.preprocessing.transforms import load_images
    from pipeline.tools.validate import main as validate

    image = oblique_image()
    write_series(image, tmp_path / "good")
    write_series(oblique_image(seed=5), tmp_path / "gappy", skip=[2])
    rows = ["case_id,image,label"]
    for case in ("good", "gappy"):
        rows.append(f"{case},{case},{_label(image, tmp_path / f'{case}_label.nii.gz').name}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert validate([str(tmp_path), "--layout", "csv", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'gappy'}" in out and "missing slice(s): 1 between slice_001.dcm and slice_003.dcm" in out
    assert f"{tmp_path / 'good'} " not in out and "good_label" not in out  # the good case and its label pass
    loaded = load_images(["image"])({"image": str(tmp_path / "good")})["image"]
    np.testing.assert_array_equal(np.asarray(loaded), sitk.GetArrayFromImage(image).T.astype(np.float32))
    np.testing.assert_allclose(np.asarray(loaded.affine), readers.read_header(tmp_path / "good").affine, atol=1e-6)
