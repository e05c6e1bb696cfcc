"""Cross-validation: fold folders, the pooled out-of-fold table, ensemble vs single fold, grouped bootstrap."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_evaluate import LABELS, _masks, _write_dataset

from pipeline.config import for_fold, from_dict, load
from pipeline.core.cases import Case
from pipeline.evaluation import crossval, ensemble, evaluator
from pipeline.evaluation.metrics import summarize

SPLITS = {"test": ["c0", "c2"], "folds": [["c1", "c3"], ["c4"]]}


class FoldPredictor:
    """fold_0 (and any ensemble) predicts each case's designed prediction; fold_1 alone predicts nothing."""

    def __init__(self, model_dir: object, *args: object, **kwargs: object) -> None:
        dirs = list(model_dir) if isinstance(model_dir, (list, tuple)) else [model_dir]
        self.meta = {"labels": LABELS}
        if len(dirs) > 1:
            self.meta["ensemble"] = [str(d) for d in dirs]
        self.empty = len(dirs) == 1 and Path(dirs[0]).name == "fold_1"
        self.single = len(dirs) == 1
        self.device = "cpu"

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        ref, pred = _masks(case.case_id if case.case_id != "c4" else "c0")
        if self.empty:
            pred = np.zeros_like(pred)
        elif not self.single:
            pred = ref  # the ensemble is perfect
        return pred, nib.load(str(case.images[0]))


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    _write_dataset(tmp_path / "raw")
    (tmp_path / "splits.json").write_text(json.dumps(SPLITS))
    for k in (0, 1):
        (tmp_path / "models" / f"fold_{k}").mkdir(parents=True)
    params = {
        "data": {"root": str(tmp_path / "raw")},
        "split": {"file": str(tmp_path / "splits.json"), "folds": 2},
        "cv": {"folds": [0, 1]},
        "train": {"out_dir": str(tmp_path / "models"), "checkpoint_dir": str(tmp_path / "ckpt")},
        "evaluate": {
            "predictions_dir": str(tmp_path / "pred"),
            "metrics_dir": str(tmp_path / "metrics"),
            "n_bootstrap": 200,
        },
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    monkeypatch.setattr(crossval, "Predictor", FoldPredictor)
    monkeypatch.setattr(evaluator, "Predictor", FoldPredictor)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"cfg": from_dict(params), "root": tmp_path}


def test_fold_config_gives_every_fold_its_own_folders() -> None:
    cfg = load(Path(__file__).resolve().parents[1] / "configs" / "params.yaml")
    f3 = for_fold(cfg, 3)
    assert f3.sample.fold == 3 and f3.sample.out_dir.endswith("samples/fold_3")
    assert f3.train.out_dir == f"{cfg.train.out_dir}/fold_3" and f3.train.checkpoint_dir.endswith("fold_3")
    assert f3.train.log_file is None
    assert f3.train.log_path == f"{cfg.train.out_dir}/fold_3/train_log.csv"
    assert len({for_fold(cfg, k).train.checkpoint_dir for k in range(5)}) == 5
    logged = for_fold(from_dict({"train": {"log_file": "logs/train_log.csv"}}), 2).train.log_file
    assert logged == "logs/fold_2/train_log.csv"  # a set log file: one per fold, never shared


def test_out_of_fold_table_covers_every_non_test_case_once_with_its_fold(study: dict) -> None:
    per_case, summary = crossval.out_of_fold(study["cfg"])
    written = pd.read_csv(study["root"] / "metrics" / "cv" / "per_case.csv")
    assert len(written) == len(per_case) == 3 * 2  # three non-test cases, two classes
    folds = written.drop_duplicates("case_id").set_index("case_id")["fold"].to_dict()
    assert folds == {"c1": 0, "c3": 0, "c4": 1}
    assert summary["complete"] and summary["n_cases"] == summary["n_non_test_cases"] == 3
    # fold 1 predicted nothing for c4 (a c0-like case with both classes): its Dice is 0
    assert summary["folds"]["fold_1"]["mean_dice"] == 0.0 and summary["folds"]["fold_0"]["mean_dice"] > 0.5
    assert summary["fold_spread"]["min"] == 0.0
    assert summary["mean over classes"]["dice"]["n"] == 3
    assert json.loads((study["root"] / "metrics" / "cv" / "summary.json").read_text())["complete"]
    # the keep-largest-component decision is recorded beside the fold models, with its CIs
    post = json.loads((study["root"] / "models" / "postprocessing.json").read_text())
    assert set(post["classes"]) == {"organ", "lesion"} and "ci95_low" in post["classes"]["organ"]
    assert post == summary["postprocessing"]
    # per-fold tables as the crossval@k stages write them; pooling reads them instead of predicting again
    assert (study["root"] / "metrics" / "oof" / "fold_1" / "per_case.csv").is_file()


def test_pool_stage_with_only_fold_all_writes_its_outputs_and_chooses_nothing(study: dict) -> None:
    """``cv.folds: [all]`` (every non-test case trains, no validation): the pool stage's outputs say so."""
    cfg = dataclasses.replace(study["cfg"], cv=dataclasses.replace(study["cfg"].cv, folds=("all",)))
    (study["root"] / "models" / "fold_all").mkdir()
    per_case, summary = crossval.out_of_fold(cfg)
    assert per_case.empty and summary["n_cases"] == 0 and summary["n_non_test_cases"] == 3
    assert "fold 'all'" in summary["note"] and not summary["complete"]
    post = json.loads((study["root"] / "models" / "postprocessing.json").read_text())
    assert post["keep_largest_component"] == [] and post["folds"] == ["fold_all"]
    assert pd.read_csv(study["root"] / "metrics" / "cv" / "per_case.csv").empty
    assert ensemble.read_cv_summary(study["root"] / "metrics") is None  # no cross-validation table to report
    result = evaluator.evaluate(cfg)
    assert result["mean_dice"] > 0.5
    assert "Cross-validation (out-of-fold)" not in (study["root"] / "metrics" / "report.html").read_text()


def test_test_set_reports_the_ensemble_beside_fold_0(study: dict) -> None:
    crossval.out_of_fold(study["cfg"])
    summary = evaluator.evaluate(study["cfg"])
    ens = summary["ensemble"]
    assert ens["folds"] == ["fold_0", "fold_1"] and ens["single"] == "fold_0"
    assert ens["mean_dice_ensemble"] == 1.0 and ens["mean_dice_single"] < 1.0
    assert ens["mean_diff"] == pytest.approx(ens["mean_dice_ensemble"] - ens["mean_dice_single"])
    table = pd.read_csv(study["root"] / "metrics" / ensemble.ENSEMBLE_FILE)
    assert set(table.class_name) == {"organ", "lesion", ensemble.MEAN_CLASS}
    assert tuple(table.columns) == ensemble.ENSEMBLE_COLUMNS  # as the header a single fold writes
    report = (study["root"] / "metrics" / "report.html").read_text()
    assert "Cross-validation (out-of-fold)" in report and "Ensemble vs single fold" in report


def test_grouped_bootstrap_resamples_patients_not_scans() -> None:
    """Five scans per patient: the grouped CI equals the per-patient one; ignoring groups makes it too narrow."""
    rng = np.random.default_rng(1)
    patient_dice = rng.uniform(0.5, 0.95, 12)
    one = pd.DataFrame({"case_id": [f"p{i}" for i in range(12)], "class_name": "organ", "dice": patient_dice})
    five = pd.DataFrame(
        {
            "case_id": [f"p{i}_scan{j}" for i in range(12) for j in range(5)],
            "group": [f"p{i}" for i in range(12) for _ in range(5)],
            "class_name": "organ",
            "dice": np.repeat(patient_dice, 5),
        }
    )
    per_patient = summarize(one, metrics=("dice",), n_bootstrap=500, seed=3)["organ"]["dice"]
    grouped = summarize(five, metrics=("dice",), n_bootstrap=500, seed=3)["organ"]["dice"]
    naive = summarize(five.drop(columns="group"), metrics=("dice",), n_bootstrap=500, seed=3)["organ"]["dice"]
    assert grouped["mean"] == pytest.approx(per_patient["mean"])
    assert grouped["ci95_low"] == pytest.approx(per_patient["ci95_low"], abs=0.01)
    assert grouped["ci95_high"] == pytest.approx(per_patient["ci95_high"], abs=0.01)
    width = grouped["ci95_high"] - grouped["ci95_low"]
    assert naive["ci95_high"] - naive["ci95_low"] < 0.6 * width


def test_largest_component_is_chosen_per_class_only_where_its_gain_ci_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    n = 30
    base = {
        "case_id": [f"c{i}" for i in range(n)] * 2,
        "class_name": ["organ"] * n + ["lesion"] * n,
        "class_index": [1] * n + [2] * n,
    }
    dice = rng.uniform(0.6, 0.9, 2 * n)
    raw = pd.DataFrame({**base, "dice": dice})
    gain = np.r_[rng.normal(0.02, 0.01, n), rng.normal(0.0, 0.02, n)]  # organ gains, lesion does not
    largest = pd.DataFrame({**base, "dice": dice + gain})
    e = from_dict({}).evaluate
    choice = crossval.choose_postprocessing(raw, largest, e)
    assert choice["keep_largest_component"] == [1]
    organ, lesion = choice["classes"]["organ"], choice["classes"]["lesion"]
    assert organ["apply"] and organ["ci95_low"] > 0 and organ["mean_gain"] == pytest.approx(gain[:n].mean())
    assert not lesion["apply"] and lesion["ci95_low"] <= 0 <= lesion["ci95_high"]
