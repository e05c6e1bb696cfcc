"""What file names say: masks and their cases, words naming scans, BIDS names, case folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.names import bids_name, case_folder_files, mask_case, scan_key


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("p1_mask.png", "p1"),
        ("patient001_frame01_gt.nii.gz", "patient001_frame01"),  # ACDC
        ("Image_01L_1stHO.png", "Image_01L"),  # CHASE_DB1
        ("benign (5)_mask_1.png", "benign (5)"),  # BUSI's further mask
        ("segmentation-0.nii", "0"),  # LiTS
        ("label0001.nii.gz", "0001"),  # BTCV
        ("mask_12.png", "12"),
        ("p1.png", None),
        ("segment_3.png", None),  # a word starting as 'seg', not naming a mask
        ("labrador.jpg", None),
        ("masked_brain.nii.gz", None),
    ],
)
def test_mask_case(name: str, case: str | None) -> None:
    assert mask_case(name) == case


def test_scan_key_leaves_a_leading_word_naming_scans_out() -> None:
    assert [scan_key(s) for s in ("volume-0", "img0001", "image_12", "ct 3", "imaging", "p1", "volumetric")] == [
        "0", "0001", "12", "3", "imaging", "p1", "volumetric",
    ]  # fmt: skip


def test_bids_name() -> None:
    name = bids_name("sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask")
    assert name is not None and (name.case, name.subject, name.is_label) == ("sub-r001s001_ses-1", "sub-r001s001", True)
    name = bids_name("sub-01_ses-2_acq-pre_run-2_T1w")
    assert name is not None and (name.case, name.channel, name.is_label) == ("sub-01_ses-2_run-2", "T1wpre", False)
    assert bids_name("sub-01_T1w_mask") is None and bids_name("subject-01_T1w") is None


def test_case_folders_name_their_files_and_leave_out_what_lies_inside() -> None:
    files = [Path(f"/d/{c}/{n}") for c in ("c1", "c2") for n in ("imaging.nii.gz", "segmentation.nii.gz")]
    files += [Path("/d/c1/instances/kidney_instance-1_annotation-1.nii.gz"), Path("/d/flat/p1.nii.gz")]
    files += [Path("/d/m1/flair.nii.gz"), Path("/d/m1/T1_pre.nii.gz"), Path("/d/m1/seg.nii.gz")]
    found, nested = case_folder_files(files)
    assert found == {
        Path("/d/c1/imaging.nii.gz"): ("c1", False),
        Path("/d/c1/segmentation.nii.gz"): ("c1", True),
        Path("/d/c2/imaging.nii.gz"): ("c2", False),
        Path("/d/c2/segmentation.nii.gz"): ("c2", True),
        Path("/d/m1/flair.nii.gz"): ("m1_flair", False),
        Path("/d/m1/T1_pre.nii.gz"): ("m1_T1pre", False),  # a channel name: letters and digits
        Path("/d/m1/seg.nii.gz"): ("m1", True),
    }
    assert nested == {Path("/d/c1/instances/kidney_instance-1_annotation-1.nii.gz")}
    # scans without masks (predict): names recurring in other folders make case folders (test cases, or slices)
    scans = [Path("/t/case_00210/imaging.nii.gz"), Path("/t/case_00211/imaging.nii.gz"), Path("/t/x/a.nii.gz")]
    assert case_folder_files(scans)[0] == {}
    assert sorted(v for v, _ in case_folder_files(scans, True)[0].values()) == ["case_00210", "case_00211"]
    slices = [Path(f"/s/P{n}/{s}{tag}.png") for n in (1, 2) for s in ("001", "002") for tag in ("", "_mask")]
    assert case_folder_files(slices, True)[0][Path("/s/P2/002_mask.png")] == ("P2_002", True)
    assert case_folder_files(slices, True)[0][Path("/s/P2/002.png")] == ("P2_002", False)
