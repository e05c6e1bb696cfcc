"""Dataset validation: one clear line per bad file, nothing for good ones, nothing written on failure."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from pipeline.core.cases import Case
from pipeline.core.dataset import read_dataset
from pipeline.core.readers import ReadError, read_array, read_header
from pipeline.core.validation import check_case, format_problems, validate_dataset, validate_or_exit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHAPE = (8, 8, 6)
AFFINE = np.array([[1.0, 0, 0, -4], [0, 1.0, 0, -4], [0, 0, 2.0, -6], [0, 0, 0, 1]])


def _image(seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(SHAPE) * 200).astype(dtype)


def _label(values: tuple[float, ...] = (0, 1, 2), dtype: type = np.uint8) -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=dtype)
    for i, v in enumerate(values[1:], start=1):
        lab[i, 2:6, 1:5] = v
    return lab


def _nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _sitk(path: Path, data: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 2.0)) -> Path:
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # numpy (x, y, z) -> ITK (z, y, x) array
    img.SetSpacing(spacing)
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # ITK is LPS: this is AFFINE's RAS identity
    img.SetOrigin((4.0, 4.0, -6.0))  # LPS of RAS (-4, -4, -6)
    sitk.WriteImage(img, str(path))
    return path


def _nifti_bytes(data: np.ndarray, affine: np.ndarray = AFFINE) -> bytes:
    return nib.Nifti1Image(data, affine).to_bytes()


def _patch_pixdim(raw: bytes, axis: int, value: float) -> bytes:
    out = bytearray(raw)
    offset = 76 + 4 * (axis + 1)  # pixdim[axis + 1] of a NIfTI-1 header
    out[offset : offset + 4] = struct.pack("<f", value)
    return bytes(out)


def _oblique() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 0.9, 2.5])
    aff[:3, 3] = [10, -20, 5]
    return aff


Expected = dict[str, "tuple[str, str] | None"]  # case id -> (bad file name, wording), None for a good case


def _build_corpus(root: Path) -> tuple[Expected, set[str]]:
    """MSD folder of good and bad cases; returns what to expect per case and the out-of-folder entries."""
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir()
    expected: dict[str, tuple[str, str] | None] = {}
    training: list[dict] = []

    def add(cid: str, image: str, label: str, problem: tuple[str, str] | None = None) -> None:
        training.append({"image": f"./imagesTr/{image}", "label": f"./labelsTr/{label}"})
        expected[cid] = problem

    def nii_case(cid: str, image: np.ndarray | None = None, label: np.ndarray | None = None, **aff: np.ndarray) -> None:
        _nii(img_dir / f"{cid}.nii.gz", _image() if image is None else image, aff.get("image_affine", AFFINE))
        _nii(lab_dir / f"{cid}.nii.gz", _label() if label is None else label, aff.get("label_affine", AFFINE))

    # --- valid cases, including the edge cases that must pass
    nii_case("good")
    add("good", "good.nii.gz", "good.nii.gz")
    nii_case("empty_label", label=np.zeros(SHAPE, np.uint8))
    add("empty_label", "empty_label.nii.gz", "empty_label.nii.gz")
    nii_case("constant", image=np.full(SHAPE, 7.0, np.float32))
    add("constant", "constant.nii.gz", "constant.nii.gz")
    nii_case("oblique", image_affine=_oblique(), label_affine=_oblique())
    add("oblique", "oblique.nii.gz", "oblique.nii.gz")
    nii_case("uint8_image", image=_image(dtype=np.uint8))
    add("uint8_image", "uint8_image.nii.gz", "uint8_image.nii.gz")
    nii_case("float_label", label=_label(dtype=np.float32))
    add("float_label", "float_label.nii.gz", "float_label.nii.gz")
    tiny_shift = AFFINE.copy()
    tiny_shift[:3, 3] += 1e-5
    nii_case("within_tolerance", label_affine=tiny_shift)
    add("within_tolerance", "within_tolerance.nii.gz", "within_tolerance.nii.gz")
    _sitk(img_dir / "nrrd_case.nrrd", _image())
    _sitk(lab_dir / "nrrd_case.nrrd", _label())
    add("nrrd_case", "nrrd_case.nrrd", "nrrd_case.nrrd")
    _sitk(img_dir / "mha_case.mha", _image())
    _sitk(lab_dir / "mha_case.mha", _label())
    add("mha_case", "mha_case.mha", "mha_case.mha")
    _sitk(img_dir / "mixed.nrrd", _image())  # NRRD image, NIfTI label: same RAS geometry
    _nii(lab_dir / "mixed.nii.gz", _label())
    add("mixed", "mixed.nrrd", "mixed.nii.gz")

    # --- one bad file per case
    def bad(cid: str, which: str, wording: str, image_name: str | None = None, label_name: str | None = None) -> None:
        image_name = image_name or f"{cid}.nii.gz"
        label_name = label_name or f"{cid}.nii.gz"
        add(cid, image_name, label_name, (image_name if which == "image" else label_name, wording))

    _nii(lab_dir / "missing.nii.gz", _label())
    bad("missing", "image", "file not found")

    nii_case("empty_file")
    (img_dir / "empty_file.nii.gz").write_bytes(b"")
    bad("empty_file", "image", "empty file (0 bytes)")

    nii_case("corrupt_gzip")
    raw = bytearray((img_dir / "corrupt_gzip.nii.gz").read_bytes())
    raw[40:200] = bytes(range(160))
    (img_dir / "corrupt_gzip.nii.gz").write_bytes(bytes(raw))
    bad("corrupt_gzip", "image", "corrupt gzip data")

    nii_case("truncated_gzip")
    raw = (img_dir / "truncated_gzip.nii.gz").read_bytes()
    (img_dir / "truncated_gzip.nii.gz").write_bytes(raw[: len(raw) // 2])
    bad("truncated_gzip", "image", "truncated gzip stream")

    _nii(lab_dir / "truncated_nii.nii.gz", _label())
    raw = _nifti_bytes(_image())
    (img_dir / "truncated_nii.nii").write_bytes(raw[:-100])
    bad("truncated_nii", "image", "truncated: header promises 1536 bytes of voxel data", image_name="truncated_nii.nii")

    nii_case("short_payload_gz")
    (img_dir / "short_payload_gz.nii.gz").write_bytes(gzip.compress(_nifti_bytes(_image())[:-64]))
    bad("short_payload_gz", "image", "truncated: header promises 1536 bytes of voxel data")

    _nii(lab_dir / "garbage.nii.gz", _label())
    (img_dir / "garbage.nii").write_bytes(np.random.default_rng(1).bytes(600))
    bad("garbage", "image", "not a NIfTI file", image_name="garbage.nii")

    nii_case("shape_mismatch", label=_label()[:, :, :5])
    bad("shape_mismatch", "label", "image/label shape mismatch: label 8x8x5, image 8x8x6")

    scaled = AFFINE.copy()
    scaled[2, 2] = 2.5
    nii_case("spacing_mismatch", label_affine=scaled)
    bad("spacing_mismatch", "label", "image/label spacing mismatch: label spacing (1, 1, 2.5) vs image (1, 1, 2) mm")

    shifted = AFFINE.copy()
    shifted[:3, 3] += [0.5, 0, 0]
    nii_case("origin_mismatch", label_affine=shifted)
    bad("origin_mismatch", "label", "image/label affine mismatch: label origin (-3.5, -4, -6) vs image (-4, -4, -6)")

    rotated = _oblique() @ np.diag([1 / 0.9, 1 / 0.9, 2 / 2.5, 1])  # same voxel sizes as AFFINE, rotated
    rotated[:3, 3] = AFFINE[:3, 3]
    nii_case("direction_mismatch", label_affine=rotated)
    bad("direction_mismatch", "label", "image/label affine mismatch: label direction cosines differ by up to 0.296")

    nii_case("nonint_label", label=_label((0, 0.5, 2), np.float32))
    bad("nonint_label", "label", "non-integer label values (e.g. 0.5)")

    nii_case("undeclared_label", label=_label((0, 1, 3)))
    bad("undeclared_label", "label", "label values [3] not declared in dataset.json (declared: 0, 1, 2)")

    nan_image = _image()
    nan_image[1, 1, 1] = np.nan
    nan_image[2, 2, 2] = np.inf
    nii_case("nan_image", image=nan_image)
    bad("nan_image", "image", "image contains NaN or Inf intensities (2 voxels)")

    nii_case("wrong_dim", image=_image()[:, :, 0])
    bad("wrong_dim", "image", "wrong dimensionality: expected a 3D volume (or 4D multi-channel), got 2D 8x8")

    nii_case("zero_spacing")
    (img_dir / "zero_spacing.nii").write_bytes(_patch_pixdim(_nifti_bytes(_image()), 1, 0.0))
    (img_dir / "zero_spacing.nii.gz").unlink()
    bad("zero_spacing", "image", "zero or negative voxel spacing (1, 0, 2)", image_name="zero_spacing.nii")

    nii_case("negative_spacing")
    (lab_dir / "negative_spacing.nii.gz").write_bytes(gzip.compress(_patch_pixdim(_nifti_bytes(_label()), 2, -2.0)))
    bad("negative_spacing", "label", "zero or negative voxel spacing (1, 1, -2)")

    _sitk(img_dir / "truncated_mha.mha", _image())
    raw = (img_dir / "truncated_mha.mha").read_bytes()
    (img_dir / "truncated_mha.mha").write_bytes(raw[:-300])
    _sitk(lab_dir / "truncated_mha.mha", _label())
    bad(
        "truncated_mha",
        "image",
        "truncated: header promises 1536 bytes of voxel data",
        "truncated_mha.mha",
        "truncated_mha.mha",
    )

    # --- paths that leave the dataset folder (the files exist, out there)
    outside = root.parent / "outside"
    outside.mkdir()
    _nii(outside / "x.nii.gz", _image())
    _nii(img_dir / "escape.nii.gz", _image())
    outside_entries = {f"training[{len(training)}] image", f"training[{len(training) + 1}] label"}
    training.append({"image": "../outside/x.nii.gz", "label": "./labelsTr/good.nii.gz"})
    training.append({"image": "./imagesTr/escape.nii.gz", "label": str(outside / "x.nii.gz")})

    meta = {"name": "corpus", "labels": {"0": "background", "1": "a", "2": "b"}, "modality": {"0": "MR"}}
    meta["training"] = training
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return expected, outside_entries


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected, set[str]]:
    root = tmp_path_factory.mktemp("corpus") / "data"
    return (root, *_build_corpus(root))


def test_every_bad_file_has_exactly_one_clear_line(corpus: tuple[Path, Expected, set[str]]) -> None:
    root, expected, outside_entries = corpus
    info = read_dataset(root, "msd")
    problems = validate_dataset(info, progress=False)
    for p in problems:
        assert "\n" not in p.problem and "Traceback" not in p.problem
    for cid, want in expected.items():
        if want is None:
            assert not [p for p in problems if p.case_id == cid], f"good case {cid} reported"
            continue
        bad_file, wording = want
        case_problems = [p for p in problems if p.case_id == cid]
        assert len(case_problems) == 1, f"{cid}: {case_problems}"
        assert Path(case_problems[0].file).name == bad_file
        assert wording in case_problems[0].problem, f"{cid}: {case_problems[0].problem!r}"
    outside = [p for p in problems if "points outside the dataset folder" in p.problem]
    assert len(outside) == 2 and all(Path(p.file).name == "dataset.json" for p in outside)
    assert {p.problem.split(" path ")[0] for p in outside} == outside_entries
    n_bad = sum(w is not None for w in expected.values())
    assert len(problems) == n_bad + 2


def test_pool_and_sequential_agree(corpus: tuple[Path, Expected, set[str]]) -> None:
    info = read_dataset(corpus[0], "msd")
    assert validate_dataset(info, workers=2, progress=False) == validate_dataset(info, workers=1, progress=False)


def test_cli_prints_every_bad_file_and_exits_1(corpus: tuple[Path, Expected, set[str]]) -> None:
    root, expected, _ = corpus
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.validate", str(root), "--layout", "msd"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["case", "file", "problem"]
    for cid, want in expected.items():
        if want is not None:
            assert any(cid in line and want[0] in line and want[1] in line for line in lines), cid
    assert "dataset.json" in run.stdout and "validation failed" in run.stderr


def test_cli_ok_and_malformed_dataset_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.tools import validate

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    _nii(root / "imagesTr" / "a.nii.gz", _image())
    _nii(root / "labelsTr" / "a.nii.gz", _label())
    meta = {
        "labels": {"0": "bg", "1": "x", "2": "y"},
        "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    assert validate.main([str(root)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 cases")
    (root / "dataset.json").write_text('{"labels": {"0": "bg"}, "training": [')
    assert validate.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "dataset.json" in out and "malformed dataset.json: invalid JSON" in out


def test_validate_or_exit_raises_with_the_whole_table(corpus: tuple[Path, Expected, set[str]]) -> None:
    root, expected, _ = corpus
    with pytest.raises(SystemExit) as exc:
        validate_or_exit(read_dataset(root, "msd"), workers=1)
    message = str(exc.value.code)
    assert message.splitlines()[0].split() == ["case", "file", "problem"]
    assert all(cid in message for cid, want in expected.items() if want is not None)
    assert "validation failed" in message.splitlines()[-1]


def test_preprocess_writes_nothing_when_validation_fails(
    corpus: tuple[Path, Expected, set[str]], tmp_path: Path
) -> None:
    from pipeline.stages import preprocess

    out_dir = tmp_path / "preprocessed"
    params = {
        "data": {"root": str(corpus[0]), "layout": "msd"},
        "split": {"file": str(tmp_path / "splits.json")},
        "preprocess": {"out_dir": str(out_dir), "workers": 1},
    }
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        preprocess.main(["--config", str(config)])
    assert exc.value.code not in (0, None)
    assert not out_dir.exists() and not (tmp_path / "splits.json").exists()
    # a broken dataset.json: also a clean exit, no traceback, nothing written
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text('{"training": []}')
    config.write_text(yaml.safe_dump({**params, "data": {"root": str(broken), "layout": "msd"}}))
    with pytest.raises(SystemExit) as exc:
        preprocess.main(["--config", str(config)])
    assert "malformed dataset.json: missing 'labels'" in str(exc.value.code)
    assert not out_dir.exists()


def test_readers_agree_across_formats(tmp_path: Path) -> None:
    data = _image()
    nii = _nii(tmp_path / "a.nii.gz", data)
    for path in (_sitk(tmp_path / "a.nrrd", data), _sitk(tmp_path / "a.mha", data)):
        arr, header = read_array(path)
        ref, ref_header = read_array(nii)
        np.testing.assert_array_equal(arr, ref)
        np.testing.assert_allclose(header.affine, ref_header.affine)
        assert read_header(path).shape == SHAPE
    with pytest.raises(ReadError, match="file not found"):
        read_array(tmp_path / "nope.nii.gz")
    (tmp_path / "x.xyz").write_bytes(b"xyz")
    with pytest.raises(ReadError, match="unsupported file type '.xyz'"):
        read_array(tmp_path / "x.xyz")


def test_itk_format_failures_are_one_line(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    sitk.WriteImage(img, str(tmp_path / "gz.nrrd"), useCompression=True)
    raw = (tmp_path / "gz.nrrd").read_bytes()
    (tmp_path / "gz_cut.nrrd").write_bytes(raw[:-200])
    sitk.WriteImage(img, str(tmp_path / "z.mha"), useCompression=True)
    raw = bytearray((tmp_path / "z.mha").read_bytes())
    raw[-500:-450] = bytes(50)
    (tmp_path / "z_corrupt.mha").write_bytes(bytes(raw))
    sitk.WriteImage(img, str(tmp_path / "sep.mhd"))
    (tmp_path / "sep.raw").unlink()
    (tmp_path / "garbage.mha").write_bytes(np.random.default_rng(2).bytes(300))
    expected = {
        "gz_cut.nrrd": "truncated gzip stream",
        "z_corrupt.mha": "corrupt compressed data",
        "sep.mhd": "data file 'sep.raw' named in the header not found",
        "garbage.mha": "cannot read the header: Unable to determine ImageIO reader",
    }
    for name, wording in expected.items():
        with pytest.raises(ReadError) as exc:
            read_array(tmp_path / name)
        assert wording in str(exc.value) and "\n" not in str(exc.value), name


def test_check_case_never_raises(tmp_path: Path) -> None:
    (tmp_path / "dir.nii.gz").mkdir()
    problems = check_case(Case("c", (tmp_path / "dir.nii.gz",), tmp_path / "none.nii.gz"), {0: "bg"})
    assert [p.problem for p in problems] == ["not a regular file", "file not found"]
    assert "not a regular file" in format_problems(problems)


def test_nrrd_case_preprocesses_like_nifti(tmp_path: Path) -> None:
    from pipeline.preprocessing.transforms import preprocessing

    aff = np.array([[0, -0.9, 0, 10], [0, 0, 2.5, -5], [-1.1, 0, 0, 3], [0, 0, 0, 1.0]])  # permuted, flipped axes
    data = _image()
    data[0] = 0  # some background so foreground cropping has work to do
    _nii(tmp_path / "img.nii.gz", data, aff)
    _nii(tmp_path / "lab.nii.gz", _label(), aff)
    for name in ("img", "lab"):  # the same volumes through SimpleITK's NIfTI -> LPS conversion
        sitk.WriteImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")), str(tmp_path / f"{name}.nrrd"))
    chain = preprocessing((1.0, 1.0, 1.0))
    ref = chain({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    out = chain({"image": str(tmp_path / "img.nrrd"), "label": str(tmp_path / "lab.nrrd")})
    assert out["image"].shape == ref["image"].shape
    np.testing.assert_allclose(out["image"].affine.numpy(), ref["image"].affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["image"].affine.numpy()[:3, :3], axis=0), [1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out["image"].numpy(), ref["image"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(out["label"].numpy(), ref["label"].numpy())


def _slicer_case(folder: Path, case: str, crop: bool) -> None:
    """``<case>.nrrd`` and a 3D Slicer segmentation ``<case>.seg.nrrd`` (segment "Tumor", value 1), the latter on
    the image's whole grid or cropped to the segment (origin moved by 5, 6, 3 voxels), as Slicer may save it."""
    image = sitk.GetImageFromArray(np.arange(10 * 24 * 20, dtype=np.int16).reshape(10, 24, 20))  # z, y, x
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    sitk.WriteImage(image, str(folder / f"{case}.nrrd"))
    mask = np.zeros((10, 24, 20), np.uint8)
    mask[4:6, 8:12, 6:10] = 1
    label = sitk.GetImageFromArray(mask[3:7, 6:14, 5:11] if crop else mask)
    label.SetSpacing((0.8, 0.8, 2.0))
    label.SetOrigin((-10.0 + 0.8 * 5, 5.0 + 0.8 * 6, 3.0 + 2.0 * 3) if crop else (-10.0, 5.0, 3.0))
    for key, value in {"Segment0_Name": "Tumor", "Segment0_LabelValue": "1", "Segment0_Layer": "0"}.items():
        label.SetMetaData(key, value)
    sitk.WriteImage(label, str(folder / f"{case}.seg.nrrd"), useCompression=True)


def test_slicer_segmentations_pair_by_name_give_their_segment_names_and_a_cropped_one_is_placed(tmp_path: Path) -> None:
    """``<case>.seg.nrrd`` beside ``<case>.nrrd`` is the case's label; without a dataset.json the classes take the
    segments' names. A segmentation cropped to its segments (older Slicer's default) is placed on the scan's whole
    grid wherever labels are read (validation, fingerprint, the preprocessing chain, scoring); any other label on
    part of the grid is one problem saying so."""
    from pipeline.core.labels import read_label, resolve_labels
    from pipeline.evaluation.scoring import read_mask
    from pipeline.preprocessing.fingerprint import fingerprint_case
    from pipeline.preprocessing.transforms import preprocessing

    for case in ("a", "b"):
        _slicer_case(tmp_path, case, crop=False)
    info, problems = resolve_labels(read_dataset(tmp_path, "auto"))
    assert problems == [] and info.problems == ()
    assert [(c.case_id, c.label.name) for c in info.cases] == [("a", "a.seg.nrrd"), ("b", "b.seg.nrrd")]
    assert info.labels == {0: "background", 1: "Tumor"}
    assert validate_dataset(info) == []

    chain = preprocessing((1.0, 1.0, 1.0))
    whole = chain({"image": str(tmp_path / "a.nrrd"), "label": str(tmp_path / "a.seg.nrrd")})
    row, _ = fingerprint_case(info.cases[0], [0, 1])
    _slicer_case(tmp_path, "a", crop=True)
    full, _ = read_label(tmp_path / "b.seg.nrrd")
    placed, header = read_label(tmp_path / "a.seg.nrrd", like=tmp_path / "a.nrrd")
    assert read_label(tmp_path / "a.seg.nrrd")[0].shape == (6, 8, 4)
    np.testing.assert_array_equal(placed, full)
    np.testing.assert_allclose(header.affine, read_header(tmp_path / "a.nrrd").affine)
    np.testing.assert_array_equal(read_mask(tmp_path / "a.seg.nrrd", like=tmp_path / "a.nrrd")[0], full)
    assert validate_dataset(info) == []
    again = fingerprint_case(info.cases[0], [0, 1])[0]
    assert {k: v for k, v in again.items() if k != "source_key"} == {k: v for k, v in row.items() if k != "source_key"}
    cropped = chain({"image": str(tmp_path / "a.nrrd"), "label": str(tmp_path / "a.seg.nrrd")})
    np.testing.assert_array_equal(cropped["label"].numpy(), whole["label"].numpy())
    np.testing.assert_allclose(cropped["label"].affine.numpy(), whole["label"].affine.numpy())

    (tmp_path / "a.seg.nrrd").rename(tmp_path / "a_label.nrrd")  # not a Slicer segmentation: not placed
    (tmp_path / "b.seg.nrrd").unlink()
    (tmp_path / "b.nrrd").unlink()
    found = validate_dataset(read_dataset(tmp_path, "auto"))
    assert len(found) == 1 and "shape mismatch: label 6x8x4, image 20x24x10" in found[0].problem
    assert "covers only part of the image's grid, from voxel (5, 6, 3)" in found[0].problem


@pytest.mark.parametrize("name,n_cases", [("msd_hippocampus", 200), ("pyradiomics_lesions", 3)])
def test_real_datasets_validate_clean(name: str, n_cases: int) -> None:
    root = SHARED / name
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    info = read_dataset(root, "msd")
    assert len(info.cases) == n_cases
    assert validate_dataset(info, progress=False) == []
    if name == "pyradiomics_lesions":  # the same files as a flat folder of <case>_image / <case>_label
        folder = read_dataset(root, "folder")
        assert [c.case_id for c in folder.cases] == ["brain1", "brain2", "breast1"]
        assert validate_dataset(folder, progress=False) == []
