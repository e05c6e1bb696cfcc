"""DICOM SEG output (pipeline.inference.dicom_seg): decodes to the mask, references its series, codes."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import kept_locale, oblique_image, write_series

from pipeline.core import dicom
from pipeline.inference import dicom_seg

NAMES = {0: "background", 1: "anterior", 2: "posterior"}


def _mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:7, 1:6, 1:4] = 1
    labels[6:10, 4:9, 2:5] = 2
    labels[rng.random(shape) < 0.05] = 0  # ragged edges: nothing box-shaped survives by accident
    return labels


def _decode(path: Path, volume: dicom.Volume) -> np.ndarray:
    """The SEG as an (x, y, z) label map on the series' grid, decoded by highdicom."""
    seg = hd.seg.segread(path)
    uids = [h.SOPInstanceUID for h in volume.headers]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    return np.asarray(frames).transpose(2, 1, 0)


def test_seg_decodes_to_the_mask_on_the_series_grid(tmp_path: Path) -> None:
    image = oblique_image()
    folder = write_series(image, tmp_path / "series")
    volume = dicom.read_volume(folder)
    labels = _mask(volume.shape)
    out = dicom_seg.write_seg(labels, volume, NAMES, tmp_path / "out" / "case.dcm")
    np.testing.assert_array_equal(_decode(out, volume), labels)
    seg = hd.seg.segread(out)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "anterior"), (2, "posterior")]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series.uid
    assert seg.StudyInstanceUID == volume.headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == volume.headers[0].FrameOfReferenceUID
    category = seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "85756007")  # default: Tissue
    # highdicom's own volume of the SEG puts every labelled voxel at the same place in the world
    decoded = seg.get_volume(combine_segments=True)
    np.testing.assert_array_equal(_world_labels(decoded.array, decoded.affine), _world_labels(labels, lps(volume)))


def lps(volume: dicom.Volume) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine


def _world_labels(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(world x, y, z in 0.01 mm, label) of every labelled voxel, sorted: independent of axis order."""
    idx = np.argwhere(array > 0)
    world = np.round((idx @ affine[:3, :3].T + affine[:3, 3]) * 100).astype(np.int64)
    rows = np.column_stack([world, array[tuple(idx.T)]])
    return rows[np.lexsort(rows.T[::-1])]


def test_all_empty_prediction_still_writes_a_seg(tmp_path: Path) -> None:
    volume = dicom.read_volume(write_series(oblique_image(), tmp_path / "series"))
    out = dicom_seg.write_seg(np.zeros(volume.shape, np.uint8), volume, NAMES, tmp_path / "empty.dcm")
    assert not _decode(out, volume).any()


def test_mask_off_the_grid_or_with_unnamed_labels_is_refused(tmp_path: Path) -> None:
    volume = dicom.read_volume(write_series(oblique_image(), tmp_path / "series"))
    with pytest.raises(ValueError, match="not on the series' grid"):
        dicom_seg.build_seg(np.zeros((6, 10, 12), np.uint8), volume, NAMES)
    labels = np.zeros(volume.shape, np.uint8)
    labels[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"label values \[3\] have no name"):
        dicom_seg.build_seg(labels, volume, NAMES)


def test_code_map_by_name_or_index(tmp_path: Path) -> None:
    codes_file = tmp_path / "codes.yaml"
    codes_file.write_text(
        "anterior:\n"
        "  category: [SCT, '91723000', Anatomical Structure]\n"
        "  type: {scheme: SCT, value: '5366008', meaning: Hippocampus}\n"
        "2:\n"
        "  type: [SCT, '5366008', Hippocampus]\n"
    )
    codes = dicom_seg.load_code_map(codes_file, NAMES)
    volume = dicom.read_volume(write_series(oblique_image(), tmp_path / "series"))
    seg = dicom_seg.build_seg(_mask(volume.shape), volume, NAMES, codes)
    first, second = seg.SegmentSequence
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Hippocampus"
    assert second.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"  # default category
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("middle:\n  type: [SCT, '1', x]\n", "'middle' is not a foreground class"),
        ("background:\n  type: [SCT, '1', x]\n", "'background' is not a foreground class"),
        ("1:\n  colour: [SCT, '1', x]\n", "expected a mapping with 'category' and/or 'type'"),
        ("1:\n  type: [SCT, '1']\n", r"1.type: expected \[scheme, value, meaning\]"),
        ("1: [", "cannot read the label code map"),
    ],
)
def test_bad_code_map_is_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "codes.yaml"
    path.write_text(text)
    with pytest.raises(dicom_seg.CodeMapError, match=message) as err:
        dicom_seg.load_code_map(path, NAMES)
    assert str(path) in str(err.value)


def test_incomplete_source_headers_are_completed_for_the_seg(tmp_path: Path) -> None:
    """A bare SimpleITK series (own study UID per slice, no frame of reference, no thickness) still gets a SEG."""
    image = oblique_image()
    folder = tmp_path / "bare"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # else every file gets its own series UID
    d = image.GetDirection()
    with kept_locale():
        for i in range(image.GetDepth()):
            piece = image[:, :, i]
            piece.SetMetaData("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))))
            piece.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, i)))))
            piece.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.98.1")
            piece.SetMetaData("0008|0060", "CT")
            writer.SetFileName(str(folder / f"{i}.dcm"))
            writer.Execute(piece)
    volume = dicom.read_volume(folder)
    assert len({h.StudyInstanceUID for h in volume.headers}) > 1  # what the bare writer does
    labels = _mask(volume.shape)
    out = dicom_seg.write_seg(labels, volume, NAMES, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(_decode(out, volume), labels)
    assert "FrameOfReferenceUID" not in volume.headers[0]  # the source headers are not changed


def test_seg_next_to_its_series_is_not_part_of_the_scan(tmp_path: Path) -> None:
    folder = write_series(oblique_image(), tmp_path / "series")
    volume = dicom.read_volume(folder)
    dicom_seg.write_seg(_mask(volume.shape), volume, NAMES, folder / "seg.dcm")
    again = dicom.read_volume(folder)
    assert again.files == volume.files and "seg.dcm" not in {p.name for p in again.files}
