"""Tests for pipeline.evaluation.evaluator with a stand-in predictor: outputs, empty masks, report, MLflow, timing."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import from_dict
from pipeline.core.cases import Case
from pipeline.core.dataset import read_msd
from pipeline.evaluation.compare import load_per_case
from pipeline.evaluation.ensemble import ENSEMBLE_COLUMNS, ENSEMBLE_FILE
from pipeline.evaluation.evaluator import evaluate
from pipeline.evaluation.metrics import EmptyPolicy, case_metrics, summarize

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "msd_hippocampus"
LABELS = {"0": "background", "1": "organ", "2": "lesion"}
SHAPE = (16, 14, 8)
# c1: lesion empty on both sides; c2: only the prediction misses it; c3: only the reference lacks it
SITUATIONS = {"c0": "both present", "c1": "both empty", "c2": "pred empty only", "c3": "ref empty only"}


def _masks(case_id: str) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(SHAPE, np.uint8)
    ref[3:12, 3:10, 2:6] = 1
    pred = np.roll(ref, 1, axis=0) if case_id != "c0" else ref.copy()
    if case_id in ("c0", "c2"):
        ref[6:9, 5:8, 3:5] = 2
    if case_id == "c0":
        pred[6:9, 5:8, 3:5] = 2
    if case_id == "c3":
        pred[6:9, 5:8, 3:5] = 2
    return ref, pred


def _write_dataset(root: Path) -> None:
    """A tiny MSD folder; c3 has a flipped (LPS-like) affine, c4 is a training case."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for cid in ("c0", "c1", "c2", "c3", "c4"):
        ref, _ = _masks(cid if cid != "c4" else "c0")
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        if cid == "c3":
            affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        image = rng.normal(100, 10, SHAPE).astype(np.float32) + 50 * (ref > 0)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(ref, affine), root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {"name": "tiny", "labels": LABELS, "modality": {"0": "MR"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))


class FakePredictor:
    """Returns the designed prediction of each case on its image's grid."""

    def __init__(self, run_id: str | None) -> None:
        self.meta = {"labels": LABELS, "weights_sha256": "f" * 64, "epoch": 3}
        if run_id:
            self.meta["mlflow"] = {"run_id": run_id}
        self.device = "cpu"

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        return _masks(case.case_id)[1], nib.load(str(case.images[0]))


def _params(base: Path, name: str, **evaluate: object) -> dict:
    return {
        "data": {"root": str(base / "raw")},
        "split": {"file": str(base / "splits.json")},
        "train": {"out_dir": str(base / "model"), "log_file": str(base / "train_log.csv"), "seed": 5},
        "evaluate": {
            "predictions_dir": str(base / name / "pred"),
            "metrics_dir": str(base / name / "metrics"),
            "n_bootstrap": 200,
            **evaluate,
        },
        "mlflow": {"tracking_uri": f"sqlite:///{base / 'mlflow.db'}", "experiment": "evaluate-test"},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Dataset, split table, learning curves, a dvc.lock, and the working directory set to the study."""
    base = tmp_path_factory.mktemp("evaluate")
    _write_dataset(base / "raw")
    (base / "splits.json").write_text(json.dumps({"test": ["c0", "c1", "c2", "c3"], "folds": [["c4"], []]}))
    pd.DataFrame(
        {"epoch": [0, 1, 2], "train_loss": [1.0, 0.7, 0.5], "lr": [1e-3] * 3, "val_dice_mean": [0.3, 0.5, 0.6]}
    ).to_csv(base / "train_log.csv", index=False)
    lock = {"stages": {"train": {"outs": [{"path": "models/model", "md5": "m0d3l.dir"}]}}}
    (base / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)  # dvc.lock is read from, and MLflow artifacts go to, the working directory
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield base


@pytest.fixture(scope="module")
def default_run(base: Path) -> dict:
    """Evaluate with the default empty policy, logging to an existing 'training' run."""
    from pipeline.evaluation.tracking import run

    cfg = from_dict(_params(base, "default"))
    with run(cfg.mlflow, run_name="train") as tracker:
        run_id = tracker.run_id
    summary = evaluate(cfg, FakePredictor(run_id))
    return {"cfg": cfg, "summary": summary, "run_id": run_id, "metrics": base / "default" / "metrics"}


def test_per_case_rows_trace_to_input_files(base: Path, default_run: dict) -> None:
    per_case = pd.read_csv(default_run["metrics"] / "per_case.csv")
    assert len(per_case) == 4 * 2 and set(per_case.case_id) == set(SITUATIONS)  # c4 (train) left out
    for row in per_case.itertuples():
        image = base / "raw" / "imagesTr" / row.image_file
        label = base / "raw" / "labelsTr" / row.label_file
        assert row.image_sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
        assert row.label_sha256 == hashlib.sha256(label.read_bytes()).hexdigest()
    pred = nib.load(base / "default" / "pred" / "c3.nii.gz")
    np.testing.assert_allclose(pred.affine, nib.load(base / "raw" / "imagesTr" / "c3.nii.gz").affine)


def test_three_empty_mask_situations_default_policy(default_run: dict) -> None:
    per_case = pd.read_csv(default_run["metrics"] / "per_case.csv")
    lesion = per_case[per_case.class_name == "lesion"].set_index("case_id")
    assert lesion.loc["c0", "dice"] == 1.0 and not lesion.loc["c0", "ref_empty"]
    assert (lesion.loc["c1", ["ref_empty", "pred_empty"]] == [True, True]).all()
    assert lesion.loc["c1", ["dice", "iou", "nsd"]].tolist() == [1.0, 1.0, 1.0]
    assert (lesion.loc["c2", ["ref_empty", "pred_empty"]] == [False, True]).all() and lesion.loc["c2", "dice"] == 0
    assert (lesion.loc["c3", ["ref_empty", "pred_empty"]] == [True, False]).all() and lesion.loc["c3", "dice"] == 0
    assert lesion.loc[["c1", "c2", "c3"], ["hd95_mm", "assd_mm"]].isna().all().all()
    summary = json.loads((default_run["metrics"] / "summary.json").read_text())
    assert summary["empty_policy"] == EmptyPolicy().describe()
    assert summary["mean_dice"] == pytest.approx(per_case.dice.mean(), abs=1e-12)
    assert summary["bootstrap"] == {"n": 200, "seed": 0} and summary["n_cases"] == 4
    stats = summary["lesion"]["dice"]
    assert {"mean", "std", "median", "iqr", "min", "ci95_low", "ci95_high"} <= set(stats)
    assert stats["n"] == 4 and stats["mean"] == pytest.approx(0.5)


def test_three_empty_mask_situations_custom_policy(base: Path) -> None:
    policy = {"both_empty": None, "ref_empty_only": None, "pred_empty_only": 0.25}
    cfg = from_dict(_params(base, "nullpolicy", empty_policy=policy, seed=9))
    summary = evaluate(cfg, FakePredictor(None))
    per_case = pd.read_csv(base / "nullpolicy" / "metrics" / "per_case.csv")
    lesion = per_case[per_case.class_name == "lesion"].set_index("case_id")
    assert np.isnan(lesion.loc["c1", "dice"]) and np.isnan(lesion.loc["c3", "dice"])  # reported missing
    assert lesion.loc["c2", "dice"] == 0.25 and lesion.loc["c2", "nsd"] == 0.25
    written = json.loads((base / "nullpolicy" / "metrics" / "summary.json").read_text())
    assert written["empty_policy"]["both_empty"] is None and written["empty_policy"]["pred_empty_only"] == 0.25
    assert written["lesion"]["dice"]["n"] == 2 and written["bootstrap"]["seed"] == 9
    assert summary["lesion"]["dice"]["mean"] == pytest.approx((1.0 + 0.25) / 2)


@pytest.mark.parametrize("kept", [[1], []])
def test_the_registered_model_is_the_model_as_evaluated(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: list[int]
) -> None:
    """A keep-largest choice made out of fold: evaluation logs the model folder again with its postprocessing.json
    and registers that copy, so a prediction from the registry keeps what evaluation kept; none: the trained one."""
    from pipeline.evaluation import evaluator
    from pipeline.evaluation.tracking import run

    calls: dict = {}
    monkeypatch.setattr(evaluator, "log_model_folder", lambda *a, **k: calls.update(log=(a, k)))
    monkeypatch.setattr(evaluator, "register_model", lambda *a: calls.update(register=a))
    params = _params(base, f"registered{len(kept)}")
    params["train"]["out_dir"] = str(tmp_path / "model")
    post = tmp_path / "model" / "postprocessing.json"
    post.parent.mkdir()
    post.write_text(json.dumps({"keep_largest_component": kept, "folds": ["fold_0"]}))
    cfg = from_dict(params)
    with run(cfg.mlflow, run_name="train") as tracker:
        run_id = tracker.run_id
    evaluate(cfg, FakePredictor(run_id))
    assert calls["register"][2] == run_id
    if kept:
        (args, kwargs) = calls["log"]
        assert args[:3] == (run_id, tmp_path / "model", "model_postprocessed") and kwargs == {"postprocessing": post}
        assert calls["register"][-1] == "model_postprocessed"
    else:
        assert "log" not in calls and calls["register"][-1] == "model"


def test_one_model_writes_the_ensemble_table_as_its_header_alone(default_run: dict) -> None:
    """A DVC output either way: never an empty file (DVC warns of one on every single-fold run); no report section."""
    table = pd.read_csv(default_run["metrics"] / ENSEMBLE_FILE)
    assert table.empty and tuple(table.columns) == ENSEMBLE_COLUMNS
    assert "Ensemble vs single fold" not in (default_run["metrics"] / "report.html").read_text()


def test_report_and_dvc_plot_file(default_run: dict) -> None:
    text = (default_run["metrics"] / "report.html").read_text()
    for role, cid in (("best", "c0"), ("worst", "c2")):
        assert f'alt="overlay {role} {cid}" src="data:image/png;base64,' in text
    assert text.count('alt="overlay ') == 3
    assert 'alt="learning curves" src="data:image/png;base64,' in text
    assert "https://" not in text and "http://" not in text
    assert "m0d3l.dir" in text and "Evaluation of 4 test cases (tiny)" in text
    dice = pd.read_csv(default_run["metrics"] / "per_case_dice.csv")
    assert (
        dice.case_class.is_unique
        and len(dice) == 8
        and list(dice.columns)
        == [
            "case_class",
            "case_id",
            "class_name",
            "dice",
        ]
    )


def test_mlflow_training_run_gets_summary_table_report_and_lineage(base: Path, default_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_run["cfg"].mlflow.tracking_uri)
    run = client.get_run(default_run["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test.mean_dice"] == pytest.approx(default_run["summary"]["mean_dice"], abs=1e-12)
    assert run.data.metrics["test.lesion.dice.mean"] == pytest.approx(0.5)
    tags = run.data.tags
    assert json.loads(tags["evaluate.empty_policy"])["both_empty"] == 1.0
    assert json.loads(tags["evaluate.bootstrap"]) == {"n": 200, "seed": 0}
    assert tags["lineage.dvc.out.models/model"] == "m0d3l.dir"
    assert tags["lineage.device"] == "cpu" and tags["lineage.seed.train"] == "5"
    assert tags["lineage.model.weights_sha256"] == "f" * 64
    assert tags["lineage.git.commit"] == "unknown"  # the study folder is no git repository
    assert "lineage.lib.torch" in tags and "lineage.lib.monai" in tags
    artifacts = {f.path for f in client.list_artifacts(default_run["run_id"], "evaluation")}
    assert artifacts == {
        "evaluation/per_case.csv",
        "evaluation/per_case_table.json",
        "evaluation/report.html",
        "evaluation/summary.json",
    }
    # what compare reads back from the run is the per-case table that was written
    logged = load_per_case(f"mlflow:{default_run['run_id']}", tracking_uri=default_run["cfg"].mlflow.tracking_uri)
    written = pd.read_csv(default_run["metrics"] / "per_case.csv")
    pd.testing.assert_frame_equal(logged, written.astype({"case_id": str, "class_name": str}))


needs_hippocampus = pytest.mark.skipif(
    not (HIPPOCAMPUS / "dataset.json").is_file(), reason=f"no hippocampus data at {HIPPOCAMPUS}"
)


class ShiftPredictor:
    """Predicts the reference label shifted by one voxel: a stand-in for a trained hippocampus model."""

    def __init__(self, labels: dict[int, str]) -> None:
        self.meta = {"labels": {str(k): v for k, v in labels.items()}}
        self.device = "cpu"

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        ref = np.rint(np.asanyarray(nib.load(str(case.label)).dataobj)).astype(np.uint8)
        return np.roll(ref, 1, axis=0), nib.load(str(case.images[0]))


@pytest.mark.slow
@needs_hippocampus
def test_hippocampus_evaluation_in_time_and_report_renders_offline(base: Path, tmp_path: Path) -> None:
    """evaluate() on 60 hippocampus cases (all but inference) in < 30 s; its report renders in Chromium."""
    from test_report import CHROMIUM, assert_not_blank, screenshot

    info = read_msd(HIPPOCAMPUS)
    (base / "hippo").mkdir(parents=True)
    ids = [c.case_id for c in info.cases[:60]]
    (base / "hippo" / "splits.json").write_text(json.dumps({"test": ids, "folds": [[], []]}))
    params = _params(base, "hippo")
    params["data"] = {"root": str(HIPPOCAMPUS)}
    params["split"] = {"file": str(base / "hippo" / "splits.json")}
    params["evaluate"]["n_bootstrap"] = 2000
    t0 = time.perf_counter()
    summary = evaluate(from_dict(params), ShiftPredictor(info.labels))
    seconds = time.perf_counter() - t0
    assert summary["n_cases"] == 60 and 0.3 < summary["mean_dice"] < 1.0
    assert seconds < 30, f"evaluating 60 cases took {seconds:.1f} s"

    report = base / "hippo" / "metrics" / "report.html"
    text = report.read_text()
    assert text.count('alt="overlay ') == 3 and "Hippocampus" in text
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (CI installs it in .ci/run: apt-get install chromium)")
    pixels = screenshot(report, tmp_path / "report", height=4200)
    assert_not_blank(pixels)
    # the same page with every image emptied: if the PNGs did not display, both would look alike
    stripped = report.with_name("stripped.html")
    stripped.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', text))
    without = screenshot(stripped, tmp_path / "stripped", height=4200)
    ink, ink_without = (np.mean(np.any(p < 240, axis=-1)) for p in (pixels, without))
    assert ink > 2 * ink_without, f"plots and overlays did not display ({ink:.1%} vs {ink_without:.1%} non-white)"


@pytest.mark.slow
@needs_hippocampus
def test_sixty_hippocampus_cases_all_metrics_under_30_seconds() -> None:
    """case_metrics (Dice, IoU, HD95, ASSD, NSD, volumes) + summarize with 2000 bootstraps on 60 real cases."""
    info = read_msd(HIPPOCAMPUS)
    cases = info.cases[:60]
    volumes = []
    for case in cases:
        img = nib.load(str(case.label))
        ref = np.rint(np.asanyarray(img.dataobj)).astype(np.int16)
        volumes.append((case.case_id, ref, img.header.get_zooms()[:3]))
    t0 = time.perf_counter()
    rows = []
    for i, (cid, ref, spacing) in enumerate(volumes):
        pred = np.roll(ref, 1 + i % 2, axis=i % 3)  # a shifted copy as the prediction
        rows += [{"case_id": cid, **r} for r in case_metrics(pred, ref, spacing, info.labels, 1.0, EmptyPolicy())]
    summary = summarize(pd.DataFrame(rows), n_bootstrap=2000, seed=0, policy=EmptyPolicy())
    seconds = time.perf_counter() - t0
    assert len(rows) == 120 and 0.3 < summary["mean_dice"] < 1.0
    assert seconds < 30, f"60 cases took {seconds:.1f} s"


class GridPredictor(FakePredictor):
    """The designed predictions on the image's grid, whatever its format (read by THE reader)."""

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        from pipeline.core.readers import read_header
        from pipeline.inference.predictor import reference_image

        return _masks(case.case_id)[1], reference_image(read_header(case.images[0]))


def test_nrrd_and_metaimage_datasets_are_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reference labels are read by the one reader: NRRD/MHA datasets score exactly like their NIfTI twin."""
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    _write_dataset(raw)
    meta = json.loads((raw / "dataset.json").read_text())
    for i, entry in enumerate(meta["training"]):
        suffix = ".nrrd" if i % 2 else ".mha"
        for key in ("image", "label"):
            src = raw / entry[key]
            sitk.WriteImage(sitk.ReadImage(str(src)), str(src).replace(".nii.gz", suffix))
            src.unlink()
            entry[key] = entry[key].replace(".nii.gz", suffix)
    (raw / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "splits.json").write_text(json.dumps({"test": ["c0", "c1", "c2", "c3"], "folds": [[], []]}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = from_dict(_params(tmp_path, "itk"))
    evaluate(cfg, GridPredictor(None))
    per_case = pd.read_csv(tmp_path / "itk" / "metrics" / "per_case.csv")
    organ = per_case[per_case.class_name == "organ"].set_index("case_id")
    assert organ.loc["c0", "dice"] == 1.0 and 0.5 < organ.loc["c1", "dice"] < 1.0
    assert organ.loc["c1", "label_file"] == "c1.nrrd" and organ.loc["c0", "label_file"] == "c0.mha"


def test_provenance_hashes_every_channel_file(tmp_path: Path) -> None:
    from pipeline.evaluation.evaluator import case_provenance

    files = [tmp_path / "x_0000.nii.gz", tmp_path / "x_0001.nii.gz", tmp_path / "x.nii.gz"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    row = case_provenance(Case("x", tuple(files[:2]), files[2]))
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert row["image_sha256"] == f"{digests[0]};{digests[1]}" and row["label_sha256"] == digests[2]
    assert row["image_file"] == "x_0000.nii.gz;x_0001.nii.gz"
