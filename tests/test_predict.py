"""The predict command (real lesion scans, unreadable files, mismatched model folders) and the MLflow model."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import plan_dict

from pipeline.core.dataset import Case
from pipeline.inference.model_folder import WEIGHTS, save_model_folder
from pipeline.inference.predictor import Predictor
from pipeline.networks.factory import build_model
from pipeline.tools.predict import main

LESIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pyradiomics_lesions"
needs_lesions = pytest.mark.skipif(not LESIONS.is_dir(), reason="shared lesion data not available")


def model_folder(path: Path, seed: int = 0, dims: int = 3) -> Path:
    """A randomly initialised small network saved as a model folder (geometry does not need training)."""
    torch.manual_seed(seed)
    model_cfg = {"name": "monai_unet", "base_width": 4, "depth": 2}
    net = build_model(spatial_dims=dims, in_channels=1, out_channels=2, **model_cfg)
    meta = {
        "model": model_cfg,
        "spatial_dims": dims,
        "in_channels": 1,
        "num_classes": 2,
        "labels": {"0": "background", "1": "lesion"},
        "plan": plan_dict((2.0, 2.0, 4.0), {0: "background", 1: "lesion"}),
        "patch_size": [32, 32, 16] if dims == 3 else [64, 64],
        "slice_axis": 2,
        "inference": {"overlap": 0.25, "sw_batch_size": 8, "blend": "gaussian", "mirror_tta": False},
    }
    return save_model_folder(path, net, meta)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model")


def small_scan(path: Path, seed: int, shape=(40, 36, 12), zooms=(0.9, 0.9, 4.0)) -> Path:
    rng = np.random.default_rng(seed)
    affine = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])
    data = (rng.random(shape) * 200).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def assert_same_grid(mask_file: Path, image_file: Path) -> None:
    mask, image = nib.load(str(mask_file)), nib.load(str(image_file))
    assert mask.shape == image.shape
    assert np.array_equal(mask.affine, image.affine)
    for coded in ("get_sform", "get_qform"):
        (a, ca), (b, cb) = getattr(image.header, coded)(coded=True), getattr(mask.header, coded)(coded=True)
        assert ca == cb and (a is None and b is None or np.allclose(a, b))
    assert np.issubdtype(mask.get_data_dtype(), np.integer)


@needs_lesions
def test_predict_lesion_volumes_keeps_shape_and_affine(model: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    images = sorted(LESIONS.glob("*_image.nii.gz"))
    assert len(images) == 3
    for image in images:
        (scans / image.name).symlink_to(image)
    assert main(["--model", str(model), "--input", str(scans), "--output", str(tmp_path / "out")]) == 0
    for image in images:
        assert_same_grid(tmp_path / "out" / image.name, image)
    # evaluate's path (Predictor.predict_case) gives exactly what the command wrote
    labels, _ = Predictor(model, "cpu").predict_case(Case("breast1", (images[-1],)))
    assert np.array_equal(labels, np.asarray(nib.load(str(tmp_path / "out" / images[-1].name)).dataobj))


def test_predict_folder_with_an_unreadable_scan_carries_on(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    good = [small_scan(scans / "a.nii.gz", 0), small_scan(scans / "c.nii", 1)]
    (scans / "b.nii.gz").write_bytes(good[0].read_bytes()[:2000])  # truncated download
    (scans / "notes.txt").write_text("not a scan, ignored")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = main(["--model", str(model), "--input", str(scans), "--output", str(out), "--probabilities"])
    assert code == 1
    for image in good:
        case = image.name.split(".")[0]
        assert_same_grid(out / f"{case}.nii.gz", image)
        probs = nib.load(str(out / f"{case}_probabilities.nii.gz"))
        assert probs.shape == (*nib.load(str(image)).shape, 2)
    assert not (out / "b.nii.gz").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "b.nii.gz: cannot read the scan" in errors[0] and "\n" not in errors[0]
    assert any(r.getMessage().startswith("a: ") and " s (read " in r.getMessage() for r in caplog.records)  # timing
    err = capsys.readouterr().err
    assert "1 scan(s) failed" in err and "b.nii.gz" in err


def test_predict_single_file(model: Path, tmp_path: Path) -> None:
    scan = small_scan(tmp_path / "one.nii.gz", 2)
    assert main(["--model", str(model), "--input", str(scan), "--output", str(tmp_path / "out"), "--mirror"]) == 0
    assert_same_grid(tmp_path / "out" / "one.nii.gz", scan)


def test_predict_refuses_mismatched_model_folder(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scan = small_scan(tmp_path / "one.nii.gz", 3)
    mixed = tmp_path / "mixed"
    shutil.copytree(model, mixed)
    other = model_folder(tmp_path / "other", seed=1)
    shutil.copy(other / WEIGHTS, mixed / WEIGHTS)  # weights of another run
    with caplog.at_level(logging.ERROR):
        code = main(["--model", str(mixed), "--input", str(scan), "--output", str(tmp_path / "out")])
    assert code == 2
    assert any("checksum does not match" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out").exists()
    assert main(["--model", str(tmp_path / "nowhere"), "--input", str(scan), "--output", str(tmp_path / "o")]) == 2


def test_mlflow_loads_and_predicts_the_logged_model(model: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from pipeline.inference.mlflow_model import log_model_folder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    model_uri = log_model_folder(run_id, model, tracking_uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # left as it was

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "logged")))
    assert (local / "code" / "pipeline" / "inference" / "mlflow_model.py").is_file()  # loads without this repo
    loaded = mlflow.pyfunc.load_model(model_uri)
    assert loaded.metadata.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    scans = [small_scan(tmp_path / "one.nii.gz", 4), small_scan(tmp_path / "two.nii.gz", 6)]
    labels = loaded.predict([str(s) for s in scans])
    for scan, got in zip(scans, labels, strict=True):
        expected, _ = Predictor(model, "cpu").predict_case(Case(scan.name, (scan,)))
        assert np.array_equal(got, expected)
    with pytest.raises(mlflow.exceptions.MlflowException, match="Expected list"):
        loaded.predict(str(scans[0]))  # the input schema: a list of scan paths


def test_predict_refuses_to_overwrite_its_inputs(model: Path, tmp_path: Path) -> None:
    scan = small_scan(tmp_path / "one.nii.gz", 5)
    assert main(["--model", str(model), "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert nib.load(str(scan)).get_data_dtype() == np.int16  # untouched
