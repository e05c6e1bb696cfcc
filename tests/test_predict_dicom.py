"""predict on DICOM series: the same masks as from the NIfTI they came from, as NIfTI or as a DICOM SEG."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_series
from test_predict import model_folder

from pipeline.core import dicom
from pipeline.tools.predict import main


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model")


def scan_image(seed: int = 0, shape: tuple[int, int, int] = (40, 36, 12)) -> sitk.Image:
    """An int16 scan on an oblique, anisotropic grid, with a bright blob the network reacts to."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[::-1]], indexing="ij")
    blob = (x**2 + y**2 + z**2 < 0.3) * 800
    image = sitk.GetImageFromArray((rng.normal(0, 60, shape[::-1]) + blob).astype(np.int16))
    c, s = np.cos(0.2), np.sin(0.2)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetSpacing((0.9, 0.9, 4.0))
    image.SetOrigin((10.0, -20.0, 35.0))
    return image


def decode_seg(path: Path, series: Path) -> np.ndarray:
    """The SEG as an (x, y, z) label map on the series' grid (slices in the reader's order), by highdicom."""
    volume = dicom.read_volume(series)
    frames = hd.seg.segread(path).get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in volume.headers], combine_segments=True
    )
    return np.asarray(frames).transpose(2, 1, 0)


def test_seg_of_a_series_equals_the_nifti_prediction_of_the_same_scan(model: Path, tmp_path: Path) -> None:
    image = scan_image()
    nifti = tmp_path / "nifti" / "scan.nii.gz"
    nifti.parent.mkdir()
    sitk.WriteImage(image, str(nifti))
    series = write_series(image, tmp_path / "dicom" / "scan")
    codes = tmp_path / "codes.json"
    codes.write_text('{"lesion": {"type": ["SCT", "52988006", "Lesion"]}}')

    assert main(["--model", str(model), "--input", str(nifti.parent), "--output", str(tmp_path / "a")]) == 0
    assert main(["--model", str(model), "--input", str(series), "--output", str(tmp_path / "b")]) == 0
    args = ["--output-format", "dicom-seg", "--label-codes", str(codes)]
    assert main(["--model", str(model), "--input", str(series), "--output", str(tmp_path / "c"), *args]) == 0

    expected = np.asarray(nib.load(str(tmp_path / "a" / "scan.nii.gz")).dataobj)
    assert 0 < expected.mean() < 1  # a mask with both classes, so the comparison means something
    from_series = nib.load(str(tmp_path / "b" / "scan.nii.gz"))
    np.testing.assert_array_equal(np.asarray(from_series.dataobj), expected)
    np.testing.assert_allclose(from_series.affine, nib.load(str(nifti)).affine, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["scan.dcm"]
    np.testing.assert_array_equal(decode_seg(tmp_path / "c" / "scan.dcm", series), expected)
    segment = hd.seg.segread(tmp_path / "c" / "scan.dcm").SegmentSequence[0]
    assert segment.SegmentLabel == "lesion"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"


def test_folder_of_series_carries_on_past_a_broken_one(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    scans = tmp_path / "scans"
    write_series(scan_image(1), scans / "good", series="1")
    write_series(scan_image(2), scans / "gappy", series="2", skip=[5])
    out = tmp_path / "out"
    args = ["--model", str(model), "--input", str(scans), "--output", str(out), "--output-format", "dicom-seg"]
    with caplog.at_level(logging.ERROR):
        code = main(args)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.dcm"]
    err = capsys.readouterr().err
    assert "1 scan(s) failed" in err and f"{scans / 'gappy'}" in err and "missing slice(s): 1 between" in err


def test_series_rule_on_the_command_line(model: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_series(scan_image(3), study / "t1", series="1", description="T1 axial")
    write_series(scan_image(4, (40, 36, 8)), study / "loc", series="2", modality="CT", description="Localizer")
    out = tmp_path / "out"
    base = ["--model", str(model), "--input", str(study), "--output", str(out), "--output-format", "dicom-seg"]
    assert main(base) == 0  # no DICOM file directly in study/: each subfolder is a scan
    assert sorted(p.name for p in out.iterdir()) == ["loc.dcm", "t1.dcm"]
    patient = tmp_path / "patient"
    patient.mkdir()
    study.rename(patient / "study")
    seg_args = ["--output-format", "dicom-seg", "--dicom-modality", "MR"]
    assert main([*base[:3], str(patient), "--output", str(tmp_path / "p"), *seg_args]) == 0
    seg = hd.seg.segread(tmp_path / "p" / "study.dcm")
    t1 = dicom.read_volume(patient / "study" / "t1")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t1.series.uid
    assert main([*base[:3], str(patient), "--output", str(tmp_path / "q")]) == 1  # two series, no rule


def test_dicom_seg_needs_dicom_input(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nifti = tmp_path / "scan.nii.gz"
    sitk.WriteImage(scan_image(), str(nifti))
    args = [
        "--model",
        str(model),
        "--input",
        str(nifti),
        "--output",
        str(tmp_path / "o"),
        "--output-format",
        "dicom-seg",
    ]
    with caplog.at_level(logging.ERROR):
        code = main(args)
    assert code == 2
    assert any("dicom-seg" in r.getMessage() and "scan.nii.gz" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "o").exists()
