"""Predictor: oblique anisotropic scans come back in place, memory modes, TTA, post-processing, model folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import plan_dict
from scipy.spatial.transform import Rotation

from pipeline.core import io
from pipeline.core.cases import Case
from pipeline.inference.model_folder import (
    META,
    WEIGHTS,
    ModelFolderError,
    load_model_folder,
    save_model_folder,
    sha256,
)
from pipeline.inference.predictor import Predictor, UnreadableScanError, save_probabilities
from pipeline.networks.factory import build_model

LESIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pyradiomics_lesions"
CENTRE = np.array([10.0, -20.0, 30.0])  # world (RAS mm) centre of the synthetic scan


class Threshold(torch.nn.Module):
    """Deterministic 'network': foreground logit = 20 * (intensity - t), for 2D or 3D windows."""

    def __init__(self, t: float = 0.0) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20 * (x - self.t)], dim=1)


def oblique_affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel axes i -> S, j -> L, k -> A (so RAS reorientation permutes and flips), rotated 25 degrees off-axis."""
    perm = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    rot = Rotation.from_rotvec(np.deg2rad(25) * axis).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag(spacing)
    affine[:3, 3] = CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine


def write_scan(
    path: Path,
    blobs: list[tuple[np.ndarray, np.ndarray]],
    spacing: tuple[float, float, float] = (0.7, 0.9, 3.0),
    shape: tuple[int, int, int] = (90, 100, 24),
) -> np.ndarray:
    """An oblique, anisotropic scan: a body (100) holding bright ellipsoids (300) given as (centre, semi-axes) in mm.

    Returns the ellipsoids' true mask on the scan's voxel grid (voxel centres inside).
    """
    affine = oblique_affine(spacing, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    body = (((xyz - CENTRE) / 40.0) ** 2).sum(1) <= 1
    obj = np.zeros(len(xyz), dtype=bool)
    for centre, axes in blobs:
        obj |= (((xyz - centre) / axes) ** 2).sum(1) <= 1
    image = np.where(obj, 300.0, np.where(body, 100.0, 0.0)).reshape(shape).astype(np.float32)
    nii = nib.Nifti1Image(image, affine)
    nii.set_sform(affine, 2)  # aligned
    nii.set_qform(affine, 1)  # scanner
    nib.save(nii, str(path))
    return obj.reshape(shape)


BLOB = (CENTRE + np.array([20.0, -17.0, 5.0]), np.array([12.0, 10.0, 9.0]))


def meta_for(dims: int, target=(1.2, 1.2, 1.2), overlap: float = 0.25, **inference) -> dict:
    return {
        "model": {"name": "monai_unet", "base_width": 4, "depth": 2},
        "spatial_dims": dims,
        "in_channels": 1,
        "num_classes": 2,
        "labels": {"0": "background", "1": "object"},
        "plan": plan_dict(target, {0: "background", 1: "object"}),
        "patch_size": [32, 32] if dims == 2 else [32, 32, 16],
        "slice_axis": 2,
        "inference": {"overlap": overlap, "sw_batch_size": 8, "blend": "gaussian", **inference},
    }


def threshold_predictor(scan: Path, dims: int, **kwargs) -> Predictor:
    """A Predictor whose network thresholds half-way between body and object in normalised intensity."""
    predictor = Predictor(model=Threshold(), meta=meta_for(dims), device="cpu", **kwargs)
    pre = predictor.chain({"image": str(scan)})["image"].numpy().ravel()
    body = np.median(pre[pre > pre.min() + 1e-3])
    predictor.model.t = float((body + pre.max()) / 2)
    return predictor


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("scan") / "oblique.nii.gz"
    return path, write_scan(path, [BLOB])


@pytest.mark.parametrize("dims", [2, 3])
def test_oblique_anisotropic_shape_comes_back_in_place(scan, tmp_path: Path, dims: int) -> None:
    path, truth = scan
    predictor = threshold_predictor(path, dims)
    labels, reference = predictor.predict_case(Case("oblique", (path,)))
    out = io.save_like(labels, reference, tmp_path / "oblique.nii.gz")
    src, back = nib.load(str(path)), nib.load(str(out))
    assert back.shape == src.shape
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    for coded in ("get_sform", "get_qform"):
        (a, ca), (b, cb) = getattr(src.header, coded)(coded=True), getattr(back.header, coded)(coded=True)
        assert ca == cb and np.allclose(a, b)
    pred = np.asarray(back.dataobj) == 1
    assert dice(pred, truth) > 0.95
    # the check can fail: the same mask mirrored along any voxel axis is far off
    assert all(dice(np.flip(pred, a), truth) < 0.5 for a in range(3))


def test_half_precision_matches_float32(scan) -> None:
    path, _ = scan
    case = Case("oblique", (path,))
    full = threshold_predictor(path, 3, half_precision=False).predict(case, probabilities=True)
    half = threshold_predictor(path, 3, half_precision=True).predict(case, probabilities=True)
    assert not full.half_precision and half.half_precision
    assert (full.labels == half.labels).mean() > 0.999
    diff = np.abs(full.probabilities.astype(int) - half.probabilities.astype(int))
    assert np.percentile(diff, 99.9) <= 2  # in 1/255 steps


def test_probabilities_are_consistent_and_saved_on_the_scan_grid(scan, tmp_path: Path) -> None:
    path, _ = scan
    pred = threshold_predictor(path, 3).predict(Case("oblique", (path,)), probabilities=True)
    probs = pred.probabilities
    assert probs.shape == (*pred.labels.shape, 2) and probs.dtype == np.uint8
    assert np.abs(probs.astype(int).sum(-1) - 255).max() <= 1
    decided = np.abs(probs[..., 1].astype(int) - probs[..., 0]) > 2
    assert (np.argmax(probs, -1) == pred.labels)[decided].all()
    out = save_probabilities(probs, pred.reference, tmp_path / "p.nii.gz")
    img = nib.load(str(out))
    assert img.shape == probs.shape and np.allclose(img.affine, pred.reference.affine)
    values = img.get_fdata()
    assert values.min() >= 0 and values.max() <= 1.0 + 1e-6


def test_predictor_keeps_largest_component(tmp_path: Path) -> None:
    small = (CENTRE + np.array([-18.0, 12.0, -10.0]), np.array([6.0, 6.0, 8.0]))
    path = tmp_path / "two.nii.gz"
    truth = write_scan(path, [BLOB, small])
    case = Case("two", (path,))
    both = threshold_predictor(path, 3).predict(case).labels
    largest = threshold_predictor(path, 3, keep_largest=True).predict(case).labels
    big_only = write_scan(tmp_path / "one.nii.gz", [BLOB])
    assert dice(both == 1, truth) > 0.9
    assert dice(largest == 1, big_only) > 0.95 and (largest == 1).sum() < (both == 1).sum()


@pytest.mark.parametrize(
    ("dims", "axes", "expected"),
    [(3, None, 7), (3, [0], [(2,)]), (2, [0, 2], [(2,)]), (2, [1], [(3,)])],
)
def test_predictor_mirrors_the_configured_volume_axes(dims: int, axes, expected) -> None:
    meta = meta_for(dims, mirror_tta=True, mirror_axes=axes)
    mirror = Predictor(model=Threshold(), meta=meta, device="cpu").mirror
    assert (len(mirror) == expected) if isinstance(expected, int) else (mirror == expected)
    assert Predictor(model=Threshold(), meta=meta, device="cpu", mirror_tta=False).mirror == []


def test_nrrd_scan_is_predicted_in_place_and_written_with_its_geometry(scan, tmp_path: Path) -> None:
    path, truth = scan
    nrrd = tmp_path / "oblique.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(nrrd))  # same voxel order and geometry, ITK (LPS) header
    pred = threshold_predictor(path, 3).predict(Case("b", (nrrd,)))
    assert dice(pred.labels == 1, truth) > 0.95
    out = io.save_like(pred.labels, pred.reference, tmp_path / "b.nii.gz")
    src, back = sitk.ReadImage(str(nrrd)), sitk.ReadImage(str(out))
    assert src.GetSize() == back.GetSize()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(src, get)(), getattr(back, get)(), atol=1e-4), get


def test_unreadable_scan_is_a_clear_error(scan, tmp_path: Path) -> None:
    path, _ = scan
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(path.read_bytes()[:3000])
    garbage = tmp_path / "garbage.nii"
    garbage.write_text("not an image")
    predictor = threshold_predictor(path, 3)
    for bad, wording in ((broken, "truncated"), (garbage, "truncated: 12 bytes is too short for a NIfTI header")):
        with pytest.raises(UnreadableScanError, match=rf"{bad.name}: {wording}"):
            predictor.predict(Case("x", (bad,)))


# --------------------------------------------------------------------------- model folders
def _folder(tmp_path: Path, dims: int = 3, name: str = "model") -> Path:
    torch.manual_seed(0)
    meta = meta_for(dims, target=(1.5, 1.5, 3.0))
    net = build_model(spatial_dims=dims, in_channels=1, out_channels=2, **meta["model"])
    return save_model_folder(tmp_path / name, net, meta)


@pytest.mark.skipif(not LESIONS.is_dir(), reason="shared lesion data not available")
def test_predictor_from_folder_keeps_predict_case_contract(tmp_path: Path) -> None:
    image = LESIONS / "breast1_image.nii.gz"
    labels, reference = Predictor(_folder(tmp_path), "cpu").predict_case(Case("breast1", (image,)))
    assert labels.dtype == np.uint8 and labels.shape == nib.load(str(image)).shape
    assert np.allclose(reference.affine, nib.load(str(image)).affine)


def test_model_folder_round_trip_and_refusals(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    model, meta = load_model_folder(folder)
    assert meta["num_classes"] == 2 and not model.training

    other = _folder(tmp_path, name="other")
    torch.save({"x": torch.ones(1)}, other / WEIGHTS)  # weights from elsewhere
    with pytest.raises(ModelFolderError, match="checksum does not match"):
        load_model_folder(other)

    pickled = _folder(tmp_path, name="pickled")  # checksum fine, but not a plain state dict
    torch.save({"weights": ModelFolderError("an arbitrary object")}, pickled / WEIGHTS)
    meta_p = json.loads((pickled / META).read_text())
    meta_p["weights_sha256"] = sha256(pickled / WEIGHTS)
    (pickled / META).write_text(json.dumps(meta_p))
    with pytest.raises(ModelFolderError, match="plain state dict"):
        load_model_folder(pickled)

    bad_labels = _folder(tmp_path, name="labels")
    meta_l = json.loads((bad_labels / META).read_text())
    meta_l["num_classes"] = 3
    (bad_labels / META).write_text(json.dumps(meta_l))
    with pytest.raises(ModelFolderError, match="do not match num_classes"):
        load_model_folder(bad_labels)

    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model_folder(tmp_path / "missing")
