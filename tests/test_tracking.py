"""pipeline.evaluation.tracking: no credential is stored, logged or printed; any label name makes a valid MLflow key."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import mlflow
import pytest
from conftest import tiny_params, write_params
from mlflow.tracking import MlflowClient

from pipeline.config import from_dict
from pipeline.evaluation.tracking import mlflow_keys, public_config, redact_uri, register_model, run

SECRET = "s3cr3tT0ken"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"https://alice:{SECRET}@mlflow.example.org:5000/api", "https://mlflow.example.org:5000/api"),
        (f"postgresql://alice:{SECRET}@db/mlflow?sslmode=require", "postgresql://db/mlflow?sslmode=require"),
        (f"http://host/?x=1&access_token={SECRET}", "http://host/?x=1&access_token=REDACTED"),
        (f"sqlite:////data/mlflow.db?token={SECRET}", "sqlite:////data/mlflow.db?token=REDACTED"),
        (f"https://host/path?X-Amz-Signature={SECRET}&api_key={SECRET}", None),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),  # nothing to strip: unchanged
        ("databricks://profile:prefix", "databricks://profile:prefix"),
        ("mlruns", "mlruns"),
    ],
)
def test_redact_uri_strips_user_info_and_secret_query_values(uri, expected):
    out = redact_uri(uri)
    assert SECRET not in out and "alice" not in out
    if expected is not None:
        assert out == expected


def test_public_config_redacts_only_the_tracking_uri():
    config = {"mlflow": {"tracking_uri": f"https://u:{SECRET}@h", "experiment": "x"}, "train": {"epochs": 3}}
    public = public_config(config)
    assert public == {"mlflow": {"tracking_uri": "https://h", "experiment": "x"}, "train": {"epochs": 3}}
    assert SECRET in config["mlflow"]["tracking_uri"]  # the caller's dict is not changed


def test_mlflow_keys_are_valid_and_distinct():
    names = ["val_dice_mean", "val_dice_tumour (core)", "val_dice_CD4+", "val_dice_CD4$", "a//b", "..", ""]
    keys = mlflow_keys(names)
    assert keys["val_dice_mean"] == "val_dice_mean"  # valid names are kept
    assert len(set(keys.values())) == len(names)
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name, _validate_tag_name

    for key in keys.values():
        _validate_metric_name(key)
        _validate_param_name(key)
        _validate_tag_name(key)


def test_a_tracking_uri_with_a_token_is_never_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = from_dict({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}?token={SECRET}"}})
    caplog.set_level(logging.INFO)
    with run(cfg.mlflow, run_id="0" * 32) as tracker:  # a missing run: warns with the URI
        tracker.log_metrics({"val_dice_tumour (core)": 0.5, "val_dice_CD4+": 0.25}, step=0)
    assert SECRET not in tracker.uri and SECRET in tracker.connection_uri
    assert SECRET not in caplog.text and "REDACTED" in caplog.text
    metrics = MlflowClient(tracker.connection_uri).get_run(tracker.run_id).data.metrics
    assert metrics == {"val_dice_tumour _core_": 0.5, "val_dice_CD4_": 0.25}


@pytest.mark.slow
def test_hostile_label_names_and_a_token_through_training_and_report(tiny_study, tmp_path, monkeypatch, capfd, caplog):
    """Labels legal in dataset.json but not in an MLflow key, a ``$`` for matplotlib, a token in the URI."""
    from pipeline.stages import evaluate, train

    for name in ("raw", "pre", "samples", "splits.json"):  # the tiny study, with its labels renamed
        (shutil.copytree if (tiny_study / name).is_dir() else shutil.copy)(tiny_study / name, tmp_path / name)
    labels = {"0": "background", "1": "tumour (core)", "2": "CD4+ $x^$"}
    for path, key in ((tmp_path / "raw" / "dataset.json", "labels"), (tmp_path / "pre" / "plans.json", "labels")):
        meta = json.loads(path.read_text())
        meta[key] = labels
        path.write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(tmp_path / "run", epochs=1, iters_per_epoch=1)  # logging crashed at epoch 0
    params["mlflow"]["tracking_uri"] += f"?token={SECRET}"
    config = str(write_params(tmp_path / "params.yaml", params))
    caplog.set_level(logging.INFO)
    for stage in (train, evaluate):
        assert stage.main(["--config", config]) == 0, stage.__name__

    run_dir = tmp_path / "run"
    model_json = (run_dir / "model" / "model.json").read_text()
    assert "tumour (core)" in model_json and SECRET not in model_json
    assert SECRET not in (run_dir / "metrics" / "report.html").read_text()
    assert "CD4+ $x^$" in (run_dir / "metrics" / "report.html").read_text()
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text

    run_id = json.loads(model_json)["mlflow"]["run_id"]
    client = MlflowClient(params["mlflow"]["tracking_uri"])
    data = client.get_run(run_id).data
    assert [m.step for m in client.get_metric_history(run_id, "val_dice_tumour _core_")] == [0]
    assert "val_dice_CD4_ _x__" in data.metrics
    assert not [k for k, v in data.params.items() if SECRET in v]
    # nothing written anywhere (model folder, MLflow store and artifacts, pyfunc copy, report) holds the token
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "params.yaml"]
    assert any(p.name == "MLmodel" for p in written)  # the pyfunc model is among them
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None):  # noqa: ANN001, ANN201
        return model_input


def test_register_model_once_per_run_with_metric_tags(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(name="model", python_model=_Echo())

    first = register_model(uri, "seg", run_id, {"test.mean_dice": 0.5, "test.n_cases": 3})
    again = register_model(uri, "seg", run_id, {"test.mean_dice": 0.75})
    assert first is not None and again is not None and str(first.version) == str(again.version) == "1"
    version = client.get_model_version("seg", "1")
    assert version.run_id == run_id
    assert version.tags == {"test.mean_dice": "0.75", "test.n_cases": "3"}  # re-evaluation updates the tags
    assert mlflow.pyfunc.load_model("models:/seg/1").predict(["a.nii.gz"]) == ["a.nii.gz"]

    other = client.create_run(exp).info.run_id  # a run without a model is not registered
    assert register_model(uri, "seg", other, {"test.mean_dice": 1.0}) is None
    assert len(client.search_model_versions("name = 'seg'")) == 1
