"""The generated methods-and-results paragraph: every number comes from the files the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, from_dict
from pipeline.evaluation.methods import methods_paragraphs, results_sections

POLICY = {"both_empty": 1.0, "ref_empty_only": 0.0, "pred_empty_only": None, "applies_to": ["dice", "iou", "nsd"]}


def _meta(epochs_run: int, minutes: float) -> dict:
    return {
        "model": {"name": "monai_unet"},
        "parameters": 123456,
        "spatial_dims": 3,
        "epoch": epochs_run - 1,
        "plan": {"target_spacing": [1.0, 1.0, 1.5], "normalization": "zscore", "crop_foreground": True},
        "settings": {
            "patch_size": {"value": [40, 56, 40], "source": "planned", "reason": "median shape"},
            "epochs": {"value": 94, "source": "overridden", "reason": "set in the config"},
        },
        "training": {"epochs_planned": 94, "epochs_run": epochs_run, "stopped_by_max_minutes": epochs_run < 94,
                     "minutes": minutes},  # fmt: skip
        "config": {"train": {"optimizer": "adamw", "lr": 0.003, "loss": {"dice_include_background": False}}},
    }


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.chdir(tmp_path)
    splits = {"test": ["a", "b"], "folds": [["c", "d"], ["e"]], "seed": 7, "test_fraction": 0.3,
              "groups": {"c": "p1", "d": "p1", "e": "p2"}}  # fmt: skip
    Path("splits.json").write_text(json.dumps(splits))
    lock = {"stages": {"synthesize": {"outs": [{"path": "data/raw", "md5": "abc123.dir"}]},
                       "preprocess": {"outs": [{"path": "data/pre", "md5": "def456.dir"}]}}}  # fmt: skip
    Path("dvc.lock").write_text(yaml.safe_dump(lock))
    for k, (run, minutes) in enumerate([(31, 20.02), (94, 18.5)]):
        Path(f"models/fold_{k}").mkdir(parents=True)
        Path(f"models/fold_{k}/model.json").write_text(json.dumps(_meta(run, minutes)))
    summary = {
        "organ": {"dice": {"mean": 0.8123, "ci95_low": 0.79, "ci95_high": 0.83}},
        "mean_dice": 0.8123,
        "n_cases": 2,
        "bootstrap": {"n": 2000, "seed": 0},
        "empty_policy": POLICY,
        "ensemble": {"folds": ["fold_0", "fold_1"], "single": "fold_0", "mean_dice_ensemble": 0.8123,
                     "mean_dice_single": 0.7911, "mean_diff": 0.0212, "ci95_low": 0.004, "ci95_high": 0.041,
                     "wilcoxon_p": 0.0312, "n_pairs": 2},  # fmt: skip
    }
    Path("metrics/cv").mkdir(parents=True)
    Path("metrics/summary.json").write_text(json.dumps(summary))
    cv = {
        "n_cases": 3,
        "n_non_test_cases": 3,
        "mean over classes": {"dice": {"mean": 0.7771, "ci95_low": 0.7012, "ci95_high": 0.8533}},
        "folds": {"fold_0": {"n_cases": 2, "mean_dice": 0.8}, "fold_1": {"n_cases": 1, "mean_dice": 0.75}},
        "fold_spread": {"min": 0.75, "max": 0.8, "std": 0.035},
        "postprocessing": {"classes": {"organ": {"apply": True, "mean_gain": 0.01, "ci95_low": 0.002}}},
    }
    Path("metrics/cv/summary.json").write_text(json.dumps(cv))
    return from_dict(
        {
            "data": {"root": "data/raw"},
            "preprocess": {"out_dir": "data/pre"},
            "split": {"file": "splits.json"},
            "cv": {"folds": [0, 1]},
            "train": {"out_dir": "models"},
            "evaluate": {"metrics_dir": "metrics", "nsd_tolerance_mm": 1.5},
        }
    )


def _text(cfg: Config) -> tuple[str, str]:
    methods, results = methods_paragraphs(cfg, [Path("models/fold_0"), Path("models/fold_1")])
    return methods, results


def test_the_paragraph_states_what_the_files_hold(study: Config) -> None:
    methods, results = _text(study)
    assert "5 labelled cases from data/raw (DVC md5 abc123.dir" in methods and "DVC md5 def456.dir" in methods
    assert "2 cases were held out for testing (split.test_fraction 0.3, seed 7)" in methods
    splits = json.loads(Path("splits.json").read_text())
    Path("splits.json").write_text(json.dumps(dict(splits, test_given=True)))  # the dataset's own test cases
    assert "The dataset's own 2 labelled test cases were the test set and the other 3 split" in _text(study)[0]
    Path("splits.json").write_text(json.dumps(splits))
    assert "2 cross-validation folds of 2/1 cases, cases of one group (patient or site; 2 named groups)" in methods
    assert "resampled to 1.00 x 1.00 x 1.50 mm, zscore intensity normalisation" in methods
    assert "patch_size [40, 56, 40] (planned)" in methods and "epochs 94 (overridden)" in methods
    assert "monai_unet (123456 parameters), 3D" in methods and "adamw with learning rate 0.003" in methods
    assert "fold_0 31 of 94 planned epochs in 20.0 min (stopped by the wall clock" in methods
    assert "fold_1 94 of 94 planned epochs in 18.5 min, kept epoch 93" in methods
    assert "tolerance 1.50 mm" in methods and "only the prediction is ('–': reported missing)" in methods
    assert "2000 resamples (seed 0)" in methods
    assert "per-case mean Dice 0.777 (95% CI 0.701-0.853); fold means 0.750-0.800" in results
    assert "largest connected component was applied to organ" in results
    assert "Test set (2 cases): mean Dice 0.812; organ 0.812 (95% CI 0.790-0.830)" in results
    assert "0.812 against 0.791 for fold_0 alone: difference 0.021 (paired bootstrap 95% CI 0.004 to 0.041" in results
    assert "Wilcoxon p = 0.031, 2 cases" in results
    html = results_sections(study, [Path("models/fold_0"), Path("models/fold_1")])[0]
    assert "Methods and results" in html and "Cross-validation (out-of-fold)" in html


def test_changing_a_metric_file_changes_the_paragraph(study: Config) -> None:
    before = _text(study)
    summary = json.loads(Path("metrics/summary.json").read_text())
    summary["organ"]["dice"] |= {"mean": 0.6543, "ci95_low": 0.6011}
    Path("metrics/summary.json").write_text(json.dumps(summary))
    cv = json.loads(Path("metrics/cv/summary.json").read_text())
    cv["mean over classes"]["dice"]["mean"] = 0.5561
    Path("metrics/cv/summary.json").write_text(json.dumps(cv))
    meta = json.loads(Path("models/fold_1/model.json").read_text())
    meta["training"]["epochs_run"] = 57
    Path("models/fold_1/model.json").write_text(json.dumps(meta))
    methods, results = _text(study)
    assert (methods, results) != before
    assert "organ 0.654 (95% CI 0.601-0.830)" in results and "organ 0.812" not in results
    assert "per-case mean Dice 0.556 (95% CI" in results
    assert "fold_1 57 of 94 planned epochs" in methods


def test_without_dvc_lock_or_cross_validation_it_says_so(study: Config) -> None:
    Path("dvc.lock").unlink()
    Path("metrics/cv/summary.json").unlink()
    methods, results = _text(study)
    assert "from data/raw (not in a dvc.lock" in methods
    assert "Cross-validation" not in results and results.startswith("Test set (2 cases)")


def test_a_small_p_value_is_not_printed_as_zero() -> None:
    from pipeline.evaluation.methods import p_value

    assert p_value(1.3e-6) == "< 0.001" and p_value(0.0312) == "= 0.031" and p_value(None) == "= –"
