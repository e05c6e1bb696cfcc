"""The predict command (real lesion scans, unreadable files, mismatched model folders) and the MLflow model."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import plan_dict

from pipeline.core.cases import Case
from pipeline.inference.model_folder import WEIGHTS, save_model_folder
from pipeline.inference.predictor import Predictor
from pipeline.networks.factory import build_model
from pipeline.tools.predict import main

LESIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pyradiomics_lesions"
needs_lesions = pytest.mark.skipif(not LESIONS.is_dir(), reason="shared lesion data not available")


def model_folder(path: Path, seed: int = 0, dims: int = 3, in_channels: int = 1) -> Path:
    """A randomly initialised small network saved as a model folder (geometry does not need training)."""
    torch.manual_seed(seed)
    model_cfg = {"name": "monai_unet", "base_width": 4, "depth": 2}
    net = build_model(spatial_dims=dims, in_channels=in_channels, out_channels=2, **model_cfg)
    meta = {
        "model": model_cfg,
        "spatial_dims": dims,
        "in_channels": in_channels,
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
    path.parent.mkdir(parents=True, exist_ok=True)
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
    assert len(errors) == 1 and "b.nii.gz: truncated" in errors[0] and "\n" not in errors[0]
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
    # logged with the keep-largest choice made out of fold (what evaluation registers): applied when loaded
    post = tmp_path / "postprocessing.json"
    post.write_text(json.dumps({"keep_largest_component": [1], "folds": ["fold_0"]}))
    uri_post = log_model_folder(run_id, model, "model_postprocessed", uri, postprocessing=post)
    assert mlflow.pyfunc.load_model(uri_post).unwrap_python_model().predictor.keep_largest == [1]
    assert loaded.unwrap_python_model().predictor.keep_largest == []


def test_predict_refuses_to_overwrite_its_inputs(model: Path, tmp_path: Path) -> None:
    scan = small_scan(tmp_path / "one.nii.gz", 5)
    assert main(["--model", str(model), "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert nib.load(str(scan)).get_data_dtype() == np.int16  # untouched


def test_multichannel_scan_as_one_4d_file_or_one_file_per_channel(tmp_path: Path) -> None:
    """A 2-channel model predicts a 4D scan and the same scan split into <case>_0000/_0001 alike."""
    model = model_folder(tmp_path / "model2", in_channels=2)
    affine = np.diag([0.9, 0.9, 4.0, 1.0])
    chans = (np.random.default_rng(7).random((40, 36, 12, 2)) * 200).astype(np.float32)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(chans, affine), scans / "four.nii.gz")
    for c in range(2):
        nib.save(nib.Nifti1Image(chans[..., c], affine), scans / f"split_{c:04d}.nii.gz")
    out = tmp_path / "out"
    assert main(["--model", str(model), "--input", str(scans), "--output", str(out)]) == 0
    four, split = nib.load(out / "four.nii.gz"), nib.load(out / "split.nii.gz")
    assert four.shape == (40, 36, 12) and np.allclose(four.affine, affine)
    assert np.array_equal(np.asarray(four.dataobj), np.asarray(split.dataobj))
    one = tmp_path / "one"
    one.mkdir()
    nib.save(nib.Nifti1Image(chans[..., 0], affine), one / "single.nii.gz")  # one channel short
    assert main(["--model", str(model), "--input", str(one), "--output", str(tmp_path / "out1")]) == 1
    assert not (tmp_path / "out1" / "single.nii.gz").exists()


def _hostile_folder(scans: Path) -> dict[str, str]:
    """Bad scans (file name -> expected wording) mixed with good ones in one folder."""
    import gzip
    import struct

    scans.mkdir()
    affine = np.diag([-0.9, 0.9, 4.0, 1.0])
    good = small_scan(scans / "good.nii.gz", 0)
    nan = np.ones((20, 18, 6), np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), scans / "nan.nii.gz")
    raw = bytearray(nib.Nifti1Image(np.ones((20, 18, 6), np.float32), affine).to_bytes())
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1] = 0
    (scans / "flat.nii").write_bytes(bytes(raw))
    nib.save(nib.Nifti1Image(np.ones((20, 18), np.float32), affine), scans / "slice.nii.gz")
    (scans / "cut.nii.gz").write_bytes(good.read_bytes()[:1500])
    (scans / "junk.nrrd").write_bytes(b"\x00\x01junk" * 20)
    bomb = bytearray(nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)).to_bytes())
    bomb[40:56] = np.array([3, 1000, 1000, 1200, 1, 1, 1, 1], "<i2").tobytes()
    (scans / "bomb.nii.gz").write_bytes(gzip.compress(bytes(bomb)))
    (scans.parent / "secret.raw").write_bytes(bytes(range(256)) * 8)
    (scans / "escape.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 8\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\n"
        "ElementDataFile = ../secret.raw\n"
    )
    (scans / ".good.tmp.nii.gz").write_bytes(b"half-written by an interrupted run")
    (scans / "folder.nii.gz").mkdir()
    return {
        "folder.nii.gz": "not a regular file",
        "nan.nii.gz": "NaN or Inf",
        "flat.nii": "zero or negative voxel spacing",
        "slice.nii.gz": "wrong dimensionality",
        "cut.nii.gz": "truncated",
        "junk.nrrd": "cannot read the header",
        "bomb.nii.gz": "over the limit",
        "escape.mhd": "outside the scan's folder",
    }


def test_predict_checks_every_scan_like_validate_and_writes_only_good_ones(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import tracemalloc

    expected = _hostile_folder(tmp_path / "scans")
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        code = main(["--model", str(model), "--input", str(tmp_path / "scans"), "--output", str(out)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and f"{len(expected)} scan(s) failed" in err
    assert peak < 300 * 2**20  # the bomb's 1000x1000x1200 voxels were never allocated
    for name, wording in expected.items():
        lines = [line for line in err.splitlines() if name in line and line.startswith("  ")]
        assert len(lines) == 1 and wording in lines[0], (name, lines)
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]  # nothing for bad or hidden files
    assert ".good.tmp" not in err


def test_predict_refuses_output_name_collisions_before_writing(model: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    small_scan(scans / "a.nii.gz", 0)
    small_scan(scans / "a_probabilities.nii.gz", 1)  # its mask is a's probabilities file
    out = tmp_path / "out"
    assert main(["--model", str(model), "--input", str(scans), "--output", str(out), "--probabilities"]) == 2
    assert not out.exists()
    assert main(["--model", str(model), "--input", str(scans), "--output", str(out), "--no-probabilities"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "a_probabilities.nii.gz"]


def test_mlflow_model_refuses_a_scan_reading_outside_its_folder(model: Path, tmp_path: Path) -> None:
    from pipeline.inference.mlflow_model import SegmentationModel
    from pipeline.inference.predictor import UnreadableScanError

    _hostile_folder(tmp_path / "scans")
    pyfunc = SegmentationModel()
    pyfunc.predictor = Predictor(model, "cpu")
    for name, wording in (("escape.mhd", "outside the scan's folder"), ("bomb.nii.gz", "over the limit")):
        with pytest.raises(UnreadableScanError, match=rf"{name}: .*{wording}"):
            pyfunc.predict(None, [str(tmp_path / "scans" / name)])
    assert pyfunc.predict(None, [str(tmp_path / "scans" / "good.nii.gz")])[0].shape == (40, 36, 12)


def test_predict_max_voxels_refuses_larger_scans_unread(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.core import readers

    scan = small_scan(tmp_path / "big.nii.gz", 3)  # 40x36x12 = 17280 voxels
    try:
        assert (
            main(
                ["--model", str(model), "--input", str(scan), "--output", str(tmp_path / "o"), "--max-voxels", "17279"]
            )
            == 1
        )
    finally:
        readers.set_max_voxels(None)
    assert "over the limit of 17279" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_predictions_carry_no_patient_data_from_nifti_or_nrrd_headers(model: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    secret = "Doe^Jane MRN 424242"
    scans = tmp_path / "scans"
    scans.mkdir()
    img = nib.load(str(small_scan(scans / "nii.nii.gz", 7)))
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        img.header[field] = secret.encode()[:15]
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, secret.encode()))
    nib.save(img, str(scans / "nii.nii.gz"))
    itk = sitk.GetImageFromArray(np.asarray(img.dataobj).transpose(2, 1, 0).copy())
    itk.SetSpacing((0.9, 0.9, 4.0))
    itk.SetMetaData("PatientName", secret)
    sitk.WriteImage(itk, str(scans / "nrrd.nrrd"))
    assert secret.encode() in (scans / "nrrd.nrrd").read_bytes()

    out = tmp_path / "out"
    assert main(["--model", str(model), "--input", str(scans), "--output", str(out), "--probabilities"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["nii.nii.gz", "nii_probabilities.nii.gz", "nrrd.nii.gz", "nrrd_probabilities.nii.gz"]
    for name in written:
        mask = nib.load(str(out / name))
        assert mask.header["descrip"].item() == b"" and len(mask.header.extensions) == 0
        assert b"Doe" not in gzip.decompress((out / name).read_bytes())[:4096], name
    assert_same_grid(out / "nii.nii.gz", scans / "nii.nii.gz")


def decisive_model_folder(path: Path, seed: int) -> Path:
    """:func:`model_folder` with its output layer scaled up, so its probabilities are far from 0.5."""
    from pipeline.inference.model_folder import load_model_folder

    net, meta = load_model_folder(model_folder(path, seed=seed))
    last = [p for p in net.parameters() if p.ndim > 1 and 2 in p.shape[:2]][-1]
    with torch.no_grad():
        last.mul_(40.0)
    return save_model_folder(path, net, {k: v for k, v in meta.items() if k != "weights_sha256"})


def test_two_fold_folders_predict_the_argmax_of_their_mean_probabilities(tmp_path: Path) -> None:
    folds = tmp_path / "models"
    a, b = decisive_model_folder(folds / "fold_0", seed=1), decisive_model_folder(folds / "fold_1", seed=2)
    scan = small_scan(tmp_path / "scan.nii.gz", seed=3)
    probs, labels = {}, {}
    for name, models in (("a", [a]), ("b", [b]), ("ab", [a, b]), ("folder", [folds])):
        out = tmp_path / name
        args = ["--model", *map(str, models), "--input", str(scan), "--output", str(out), "--probabilities"]
        assert main([*args, "--device", "cpu"]) == 0
        probs[name] = np.asarray(nib.load(out / "scan_probabilities.nii.gz").dataobj) * 255.0  # stored uint8
        labels[name] = np.asarray(nib.load(out / "scan.nii.gz").dataobj)
    mean = (probs["a"] + probs["b"]) / 2
    assert not np.array_equal(probs["a"], probs["b"])  # two different networks
    np.testing.assert_allclose(probs["ab"], mean, atol=1.01)  # uint8 probabilities: one rounding step
    top2 = np.sort(mean, axis=-1)
    clear = top2[..., -1] - top2[..., -2] > 2  # away from rounding ties
    assert clear.mean() > 0.5 and 0.05 < mean.argmax(-1).mean() < 0.95  # both classes predicted
    assert (labels["a"] != labels["b"]).any()  # the members disagree somewhere: the mean decides there
    np.testing.assert_array_equal(labels["ab"][clear], mean.argmax(-1)[clear])
    np.testing.assert_array_equal(labels["folder"], labels["ab"])  # a folder of folds: the same ensemble


def test_ensemble_refuses_folders_with_different_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json

    a, b = model_folder(tmp_path / "fold_0", seed=1), model_folder(tmp_path / "fold_1", seed=2)
    meta = json.loads((b / "model.json").read_text())
    meta["labels"] = {"0": "background", "1": "tumour"}
    meta["plan"]["labels"] = meta["labels"]
    (b / "model.json").write_text(json.dumps(meta))
    scan = small_scan(tmp_path / "scan.nii.gz", seed=3)
    with caplog.at_level(logging.ERROR):
        code = main(["--model", str(a), str(b), "--input", str(scan), "--output", str(tmp_path / "out")])
    assert code == 2 and "fold_1: labels differ from" in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_folder_of_folds_applies_its_out_of_fold_postprocessing(tmp_path: Path) -> None:
    import json

    from pipeline.inference.postprocess import keep_largest_component

    folds = tmp_path / "models"
    decisive_model_folder(folds / "fold_0", seed=1), decisive_model_folder(folds / "fold_1", seed=2)
    scan = small_scan(tmp_path / "scan.nii.gz", seed=3)
    plain = Predictor([folds / "fold_0", folds / "fold_1"], "cpu").predict(Case("scan", (scan,))).labels
    (folds / "postprocessing.json").write_text(json.dumps({"keep_largest_component": [1]}))
    chosen = Predictor(folds, "cpu")
    assert chosen.keep_largest == [1]
    labels = chosen.predict(Case("scan", (scan,))).labels
    np.testing.assert_array_equal(labels, keep_largest_component(plain.copy(), [1]))
    assert not np.array_equal(labels, plain)  # the choice changed the written mask
    assert Predictor(folds, "cpu", keep_largest=False).keep_largest == []  # the command line wins


def test_find_cases_searches_patient_subfolders_and_skips_masks_beside_scans(tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.tools.predict import find_cases

    for patient in ("P1", "P2"):
        (tmp_path / patient).mkdir()
        for name in (f"{patient}_1", f"{patient}_1_mask", f"{patient}_2"):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / patient / f"{name}.png")
    assert [c.case_id for c in find_cases(tmp_path)] == ["P1_1", "P1_2", "P2_1", "P2_2"]
    # DRIVE's test/ as distributed: images/ beside its field-of-view masks and annotations, which are not scans
    test = tmp_path / "DRIVE" / "test"
    for folder, name in (("images", "01_test"), ("mask", "01_test_mask"), ("1st_manual", "01_manual1")):
        (test / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(test / folder / f"{name}.png")
    assert [c.case_id for c in find_cases(test)] == ["01_test"]
    # CVC-ClinicDB as distributed: Original/1.png beside Ground Truth/1.png, the same names
    for folder in ("Original", "Ground Truth"):
        (tmp_path / "CVC" / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "CVC" / folder / "1.png")
    assert [c.images[0].parent.name for c in find_cases(tmp_path / "CVC")] == ["Original"]
    # a model trained on named channel files (BraTS 2021): <case>_flair, ... grouped; <case>_seg beside them skipped
    for name in ("t1", "flair", "seg"):
        (tmp_path / "brats" / "P7").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "brats" / "P7" / f"P7_{name}.png")
    (case,) = find_cases(tmp_path / "brats", 2, ["flair", "t1"])
    assert case.case_id == "P7" and [p.name for p in case.images] == ["P7_flair.png", "P7_t1.png"]


def test_a_folder_of_folds_ensembles_only_the_folds_its_pool_stage_listed(tmp_path: Path) -> None:
    import json

    from pipeline.inference.model_folder import ModelFolderError, model_folders

    folds = tmp_path / "models"
    for k in range(3):  # fold_2 is left from an earlier run with more folds
        model_folder(folds / f"fold_{k}", seed=k)
    assert [p.name for p in model_folders(folds)] == ["fold_0", "fold_1", "fold_2"]  # nothing listed: every one
    listed = folds / "postprocessing.json"
    listed.write_text(json.dumps({"keep_largest_component": [], "folds": ["fold_0", "fold_1"]}))
    assert [p.name for p in model_folders(folds)] == ["fold_0", "fold_1"]
    listed.write_text(json.dumps({"keep_largest_component": [], "folds": ["fold_0", "fold_4"]}))
    with pytest.raises(ModelFolderError, match="fold_4, not found"):
        model_folders(folds)


def test_find_cases_names_scans_of_case_folders_and_lits_volumes_and_skips_their_masks(tmp_path: Path) -> None:
    """KiTS as distributed (case_00210/imaging.nii.gz, names recurring in every case's folder): the folder names the
    case, its segmentation and its instances/ are not scans; LiTS's volume-N beside segmentation-N; a multi-channel
    model's named channels in case folders (p1/flair.nii.gz, p1/t1.nii.gz)."""
    from pipeline.tools.predict import find_cases

    for case in ("case_00210", "case_00211"):
        small_scan(tmp_path / "kits" / case / "imaging.nii.gz", 0)
        small_scan(tmp_path / "kits" / case / "segmentation.nii.gz", 1)
        small_scan(tmp_path / "kits" / case / "instances" / "kidney_instance-1_annotation-1.nii.gz", 1)
    cases = find_cases(tmp_path / "kits")
    assert [(c.case_id, c.images[0].name) for c in cases] == [
        ("case_00210", "imaging.nii.gz"),
        ("case_00211", "imaging.nii.gz"),
    ]  # before: two scans named 'imaging', refused, and their masks and instances predicted as scans
    for n in (0, 1):
        small_scan(tmp_path / "lits" / f"volume-{n}.nii", 0)
        small_scan(tmp_path / "lits" / f"segmentation-{n}.nii", 1)
    assert [c.case_id for c in find_cases(tmp_path / "lits")] == ["volume-0", "volume-1"]
    for case in ("p1", "p2"):
        for name in ("t1", "flair", "seg"):
            small_scan(tmp_path / "brain" / case / f"{name}.nii.gz", 0)
    cases = find_cases(tmp_path / "brain", 2, ["flair", "t1"])
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("p1", ["flair.nii.gz", "t1.nii.gz"]),
        ("p2", ["flair.nii.gz", "t1.nii.gz"]),
    ]
    # test cases without their masks, channels named as training named them (T1_pre: T1pre)
    for case in ("p3", "p4"):
        for name in ("T1_pre", "T1_post"):
            small_scan(tmp_path / "unlabelled" / case / f"{name}.nii.gz", 0)
    small_scan(tmp_path / "unlabelled" / "p3" / "T2_fs.nii.gz", 0)  # a channel the model does not take
    cases = find_cases(tmp_path / "unlabelled", 2, ["T1post", "T1pre"])
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("p3", ["T1_post.nii.gz", "T1_pre.nii.gz"]),
        ("p4", ["T1_post.nii.gz", "T1_pre.nii.gz"]),
    ]


def test_find_cases_reads_bids_sessions_and_skips_their_masks(tmp_path: Path) -> None:
    """BIDS test data: a session's scans are its channels (named by suffix), its case the session; masks skipped."""
    from pipeline.tools.predict import find_cases

    for sub in ("sub-01", "sub-02"):
        anat = tmp_path / sub / "ses-1" / "anat"
        small_scan(anat / f"{sub}_ses-1_FLAIR.nii.gz", 0)
        small_scan(anat / f"{sub}_ses-1_T1w.nii.gz", 1)
        small_scan(anat / f"{sub}_ses-1_label-lesion_mask.nii.gz", 2)
    cases = find_cases(tmp_path, 2, ["FLAIR", "T1w"])
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("sub-01_ses-1", ["sub-01_ses-1_FLAIR.nii.gz", "sub-01_ses-1_T1w.nii.gz"]),
        ("sub-02_ses-1", ["sub-02_ses-1_FLAIR.nii.gz", "sub-02_ses-1_T1w.nii.gz"]),
    ]
    # a model trained on two of the three channels (data.channels): the third is not a case
    small_scan(tmp_path / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz", 3)
    cases = find_cases(tmp_path, 2, ["T1w", "FLAIR"])
    assert [[p.name for p in c.images] for c in cases][0] == ["sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_FLAIR.nii.gz"]
    (tmp_path / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz").unlink()
    # a one-channel model of data.channels [T1w]: the session's T1w only, named as the session
    cases = find_cases(tmp_path, 1, ["T1w"])
    assert [(c.case_id, c.images[0].name) for c in cases] == [
        ("sub-01_ses-1", "sub-01_ses-1_T1w.nii.gz"),
        ("sub-02_ses-1", "sub-02_ses-1_T1w.nii.gz"),
    ]
    for p in tmp_path.rglob("*_FLAIR.nii.gz"):
        p.unlink()
    assert [c.case_id for c in find_cases(tmp_path)] == ["sub-01_ses-1", "sub-02_ses-1"]  # named as training named it
