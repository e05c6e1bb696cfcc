"""Tests for pipeline.evaluation.tracking.register_model: one registry version per training run, tags updated."""

from __future__ import annotations

from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from pipeline.evaluation.tracking import register_model  # noqa: E402


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
