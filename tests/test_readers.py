"""THE reader (pipeline.core.readers): one registry of formats used by every read path, bounded reads,
headers that may not point outside the scan's folder."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImaged

from pipeline.core import readers
from pipeline.core.dataset import read_folder
from pipeline.core.readers import Backend, Header, ReadError, read_array, read_header, read_scan

AFFINE = np.array([[0.8, 0, 0, -4], [0, 0.8, 0, -4], [0, 0, 2.5, -6], [0, 0, 0, 1]])


def _toy_read(path: Path) -> tuple[np.ndarray, Header]:
    """A made-up format: JSON with the voxel array and an affine."""
    spec = json.loads(path.read_text())
    data = np.asarray(spec["data"], dtype=np.float32)
    affine = np.asarray(spec["affine"], dtype=float)
    return data, Header(data.shape, tuple(np.linalg.norm(affine[:3, :3], axis=0)), affine, "float32")


@pytest.fixture
def toy_format(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(readers, "_BACKENDS", list(readers._BACKENDS))
    monkeypatch.setattr(readers, "SUPPORTED_SUFFIXES", readers.SUPPORTED_SUFFIXES)
    readers.register(Backend("toy", (".toy.json",), lambda p: _toy_read(p)[1], _toy_read))
    return ".toy.json"


def _toy(path: Path, data: np.ndarray) -> Path:
    path.write_text(json.dumps({"data": data.tolist(), "affine": AFFINE.tolist()}))
    return path


def test_a_registered_format_is_read_everywhere(toy_format: str, tmp_path: Path) -> None:
    """One register() call: suffix list, dataset discovery, read_array and MONAI's LoadImaged all know it."""
    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 4)).astype(np.float32)
    _toy(tmp_path / f"a_image{toy_format}", image)
    _toy(tmp_path / f"a_label{toy_format}", (image > 0.5).astype(np.float32))
    assert toy_format in readers.SUPPORTED_SUFFIXES and readers.strip_suffix(f"a{toy_format}") == "a"
    info = read_folder(tmp_path)
    assert [c.case_id for c in info.cases] == ["a"] and not info.problems
    data, header = read_array(info.cases[0].images[0])
    assert np.array_equal(data, image) and np.allclose(header.affine, AFFINE)
    loaded = LoadImaged("image", reader="pipeline.core.readers.PipelineReader", image_only=True)(
        {"image": str(info.cases[0].images[0])}
    )["image"]
    assert np.array_equal(loaded.numpy(), image) and np.allclose(loaded.affine.numpy(), AFFINE)


@pytest.mark.parametrize("shape", [(7, 6, 5), (7, 6, 5, 2)])
def test_pipeline_reader_gives_what_monai_nibabel_reader_gives(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Preprocessing's NIfTI input is unchanged by going through THE reader (scaling, 4D channels, affine)."""
    data = (np.random.default_rng(1).random(shape) * 300).astype(np.int16)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "x.nii.gz")
    keys = {"image": str(tmp_path / "x.nii.gz")}
    ours = LoadImaged("image", reader="pipeline.core.readers.PipelineReader", image_only=True, dtype=np.float32)
    monai = LoadImaged("image", reader="NibabelReader", image_only=True, dtype=np.float32)
    a, b = ours(dict(keys))["image"], monai(dict(keys))["image"]
    assert a.dtype == b.dtype and np.array_equal(a.numpy(), b.numpy())
    for key in ("affine", "original_affine", "spatial_shape", "original_channel_dim"):
        assert np.array_equal(np.asarray(a.meta[key]), np.asarray(b.meta[key]), equal_nan=True), key


def test_read_scan_takes_one_4d_file_or_one_file_per_channel(tmp_path: Path) -> None:
    chans = np.random.default_rng(2).random((6, 5, 4, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(chans, AFFINE), tmp_path / "both.nii.gz")
    for c in range(2):
        nib.save(nib.Nifti1Image(chans[..., c], AFFINE), tmp_path / f"c_{c:04d}.nii.gz")
    one, header = read_scan([tmp_path / "both.nii.gz"])
    two, _ = read_scan([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert one.shape == (2, 6, 5, 4) and np.array_equal(one, two) and np.allclose(header.affine, AFFINE)
    nib.save(nib.Nifti1Image(chans[..., 0], AFFINE * 2), tmp_path / "off.nii.gz")
    with pytest.raises(ReadError, match="off.nii.gz: channel file is not on"):
        read_scan([tmp_path / "c_0000.nii.gz", tmp_path / "off.nii.gz"])


def test_nrrd_and_metaimage_read_like_nifti(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "x.nii.gz")
    for suffix in (".nrrd", ".mha", ".mhd"):
        sitk.WriteImage(sitk.ReadImage(str(tmp_path / "x.nii.gz")), str(tmp_path / f"x{suffix}"))
        arr, header = read_array(tmp_path / f"x{suffix}")
        assert np.allclose(arr, data) and np.allclose(header.affine, AFFINE, atol=1e-5)
        assert read_header(tmp_path / f"x{suffix}").shape == data.shape


# ------------------------------------------------------------------ headers that point outside the folder
def _mhd(folder: Path, name: str, data_file: str, shape: tuple[int, ...] = (4, 4, 2)) -> Path:
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {' '.join(map(str, shape))}\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {data_file}\n"
    )
    (folder / name).write_text(header)
    return folder / name


def _nhdr(folder: Path, name: str, data_file: str) -> Path:
    header = (
        f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 2\nspacings: 1 1 1\nencoding: raw\ndata file: {data_file}\n"
    )
    (folder / name).write_text(header)
    return folder / name


@pytest.fixture
def escapes(tmp_path: Path) -> dict[str, Path]:
    """Headers whose data file is absolute, climbs out, is a symlink out, or a LIST/pattern naming one."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(32)) * 4)
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "link.raw").symlink_to(secret)
    (scans / "ok.raw").write_bytes(bytes(32))
    (scans / "slice1.raw").write_bytes(bytes(16))
    out = {
        "abs.mhd": _mhd(scans, "abs.mhd", str(secret)),
        "up.mhd": _mhd(scans, "up.mhd", "../secret.raw"),
        "link.mhd": _mhd(scans, "link.mhd", "link.raw"),
        "list.mhd": _mhd(scans, "list.mhd", "LIST 2D\nslice1.raw\n../secret.raw"),
        "abs.nhdr": _nhdr(scans, "abs.nhdr", str(secret)),
        "up.nhdr": _nhdr(scans, "up.nhdr", "../secret.raw"),
        "pattern.nhdr": _nhdr(scans, "pattern.nhdr", "../slice%d.raw 1 2 1 2"),
    }
    return out


def test_headers_naming_data_outside_the_folder_are_refused(escapes: dict[str, Path]) -> None:
    for name, path in escapes.items():
        for read in (read_header, read_array):
            with pytest.raises(ReadError) as exc:
                read(path)
            message = str(exc.value)
            assert ("outside the scan's folder" in message or "absolute path" in message) and "\n" not in message, (
                name,
                message,
            )
    folder = next(iter(escapes.values())).parent
    fine = _mhd(folder, "fine.mhd", "ok.raw")
    assert read_array(fine)[0].shape == (4, 4, 2)


def test_validation_names_each_escaping_file(escapes: dict[str, Path]) -> None:
    from pipeline.core.cases import Case
    from pipeline.core.validation import check_case

    for name, path in escapes.items():
        problems = check_case(Case("x", (path,), None), {0: "bg", 1: "fg"})
        assert len(problems) == 1 and problems[0].file == str(path), name
        assert "outside" in problems[0].problem or "absolute" in problems[0].problem


# ------------------------------------------------------------------ memory a header can claim
def _claiming_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A tiny NIfTI (gzip) whose header claims ``shape`` but holds one voxel."""
    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4))
    raw = bytearray(img.to_bytes())
    dims = np.array([len(shape), *shape, *([1] * (7 - len(shape)))], dtype="<i2")
    raw[40:56] = dims.tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def test_a_tiny_gzip_claiming_a_huge_volume_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    bomb = _claiming_nifti(tmp_path / "bomb.nii.gz", (1000, 1000, 1200))
    assert bomb.stat().st_size < 120
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        for read in (read_header, read_array):
            with pytest.raises(ReadError, match="over the limit|truncated"):
                read(bomb)
        readers.set_max_voxels(10**12)  # even with no voxel limit, the file cannot hold what it claims
        with pytest.raises(ReadError, match="truncated"):
            read_array(bomb)
    finally:
        readers.set_max_voxels(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - t0 < 5 and peak < 20 * 2**20


def test_a_gzip_bomb_is_inflated_in_chunks(tmp_path: Path) -> None:
    """Real data that inflate far beyond the declared volume: only the declared bytes are kept."""
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    raw = img.to_bytes() + bytes(200 * 2**20)  # 200 MB of trailing zeros compress to ~200 kB
    path = tmp_path / "trailing.nii.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    tracemalloc.start()
    try:
        data, _ = read_array(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.shape == (8, 8, 8) and peak < 20 * 2**20


def test_the_voxel_limit_applies_to_every_format(tmp_path: Path) -> None:
    data = np.zeros((10, 10, 10), np.uint8)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "x.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / "x.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / "x.mha"), useCompression=True)
    readers.set_max_voxels(999)
    try:
        for name in ("x.nii.gz", "x.nrrd", "x.mha"):
            with pytest.raises(ReadError, match="1000 voxels, over the limit of 999"):
                read_array(tmp_path / name)
    finally:
        readers.set_max_voxels(None)
    assert read_array(tmp_path / "x.mha")[0].shape == (10, 10, 10)


def test_stages_and_tools_set_the_voxel_limit(tmp_path: Path) -> None:
    from pipeline.config import stage_args
    from pipeline.tools import validate

    config = tmp_path / "params.yaml"
    config.write_text("data:\n  max_voxels: 999\n")
    try:
        stage_args("a stage", ["--config", str(config)])
        assert readers.max_voxels() == 999
        readers.set_max_voxels(None)
        root = tmp_path / "ds"
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True)
            nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), root / sub / "a.nii.gz")
        assert validate.main([str(root), "--layout", "folder"]) == 0
        assert validate.main([str(root), "--layout", "folder", "--max-voxels", "999"]) == 1
    finally:
        readers.set_max_voxels(None)
