"""Runs the whole `dvc repro` chain on a tiny config in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "synthetic": {"n_cases": 10},
    "split": {"test_fraction": 0.3, "folds": 4},  # sample mode and patch: planned
    "train": {
        "epochs": 3,
        "iters_per_epoch": 4,
        "batch_size": 8,
        "val_every": 1,
        "model": {"base_width": 8, "depth": 2},
    },
    "evaluate": {"n_bootstrap": 200},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _run(args: list[str], cwd: Path) -> str:
    # mlflow.set_tracking_uri() in earlier in-process tests exports MLFLOW_TRACKING_URI: use the repo's store
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z]+)", output))  # train@0 -> train


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("repo")
    for name in ("pipeline", "configs", ".dvc"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    params_path = dest / "configs" / "params.yaml"
    params = _merge(yaml.safe_load(params_path.read_text()), TINY)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dest)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "tiny"], dest)
    return dest


@pytest.fixture(scope="module")
def first_run(repo: Path) -> str:
    return _run([sys.executable, "-m", "dvc", "repro"], repo)


def test_every_stage_runs_and_writes_outputs(repo: Path, first_run: str) -> None:
    assert _stages_run(first_run) == {"synthesize", "preprocess", "sample", "train", "crossval", "pool", "evaluate"}
    assert "Running stage 'train@0'" in first_run and "train@1" not in first_run  # the cheap 1-fold default
    params = yaml.safe_load((repo / "configs/params.yaml").read_text())
    per_case = pd.read_csv(repo / "metrics/per_case.csv")
    splits = json.loads((repo / "data/splits.json").read_text())
    test_ids = sorted(splits["test"])
    assert len(test_ids) == round(0.3 * params["synthetic"]["n_cases"])
    # one row per test case and foreground class, each with a Dice value in [0, 1]
    assert sorted(per_case.case_id.unique()) == test_ids
    assert len(per_case) == len(test_ids) * 2
    assert set(per_case.class_name) == {"organ", "lesion"} or per_case.class_index.nunique() == 2
    assert per_case.dice.between(0, 1).all()
    # summary mean Dice is the mean of the rows, and MLflow holds the same value
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["mean_dice"] == pytest.approx(per_case.dice.mean(), abs=1e-9)
    assert summary["empty_policy"]["both_empty"] == 1.0
    model_meta = json.loads((repo / "models/model/fold_0/model.json").read_text())
    run_id = model_meta["mlflow"]["run_id"]
    with sqlite3.connect(repo / "mlflow.db") as db:
        logged = db.execute(
            "select value from latest_metrics where run_uuid=? and key='test.mean_dice'", (run_id,)
        ).fetchone()
        n_epochs = db.execute(
            "select count(*) from metrics where run_uuid=? and key='train_loss'", (run_id,)
        ).fetchone()[0]
    assert logged is not None and logged[0] == pytest.approx(summary["mean_dice"], abs=1e-9)
    assert n_epochs == params["train"]["epochs"]
    # predictions sit on each test image's own voxel grid
    for cid in test_ids:
        pred = nib.load(repo / "data/predictions" / f"{cid}.nii.gz")
        image = nib.load(repo / "data/raw/synthetic/imagesTr" / f"{cid}.nii.gz")
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert np.issubdtype(pred.get_data_dtype(), np.integer)
    log = pd.read_csv(repo / "models/model/fold_0/train_log.csv")
    assert len(log) == params["train"]["epochs"] and log.train_loss.notna().all()


def test_second_repro_runs_nothing(repo: Path, first_run: str) -> None:
    out = _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert _stages_run(out) == set(), out


def test_registered_model_predicts_the_masks_of_predict(
    repo: Path, first_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from pipeline.tools import predict

    monkeypatch.chdir(repo)  # the store keeps its artifacts under the project folder
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    meta = json.loads((repo / "models/model/fold_0/model.json").read_text())
    summary = json.loads((repo / "metrics/summary.json").read_text())
    name = yaml.safe_load((repo / "configs/params.yaml").read_text())["mlflow"]["registered_model"]
    versions = mlflow.MlflowClient(uri).search_model_versions(f"name = '{name}'")
    [version] = [v for v in versions if v.run_id == meta["mlflow"]["run_id"]]
    assert float(version.tags["test.mean_dice"]) == pytest.approx(summary["mean_dice"], abs=1e-9)
    assert version.tags["weights_sha256"] == meta["weights_sha256"] and int(version.tags["test.n_cases"]) == 3

    cid = json.loads((repo / "data/splits.json").read_text())["test"][0]
    scan = repo / "data/raw/synthetic/imagesTr" / f"{cid}.nii.gz"
    fold_0 = str(repo / "models/model/fold_0")  # the registered model: fold 0's folder
    assert predict.main(["--model", fold_0, "--input", str(scan), "--output", str(tmp_path)]) == 0
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    [labels] = loaded.predict([str(scan)])
    expected = np.asarray(nib.load(tmp_path / f"{cid}.nii.gz").dataobj)
    assert labels.shape == expected.shape and np.array_equal(labels, expected) and expected.any()


def test_collaborator_round_trip_through_a_dvc_remote(repo: Path, first_run: str, tmp_path: Path) -> None:
    """README "Sharing": push from one clone to a remote, pull into another, where nothing needs to run."""
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo)
    _run(["git", "add", "-A"], repo)
    _run([*git, "commit", "-q", "-m", "results and remote"], repo)
    _run([sys.executable, "-m", "dvc", "push"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run([sys.executable, "-m", "dvc", "pull"], clone)
    out = _run([sys.executable, "-m", "dvc", "repro"], clone)
    assert _stages_run(out) == set() and "Data and pipelines are up to date" in out, out
    show = [sys.executable, "-m", "dvc", "metrics", "show", "--json"]
    shown = [json.loads(subprocess.run(show, cwd=r, capture_output=True, text=True).stdout) for r in (repo, clone)]
    assert shown[0] == shown[1] and "mean_dice" in json.dumps(shown[1])
    weights = "models/model/fold_0/model.pt"
    assert (clone / weights).read_bytes() == (repo / weights).read_bytes()


def test_training_change_reruns_only_train_and_evaluation(repo: Path, first_run: str) -> None:
    params_path = repo / "configs/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["lr"] = 0.002
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert _stages_run(out) == {"train", "crossval", "pool", "evaluate"}, out


def test_3d_mode_end_to_end(repo: Path, first_run: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "lr"], repo)
    volumes = {f.name: f.stat().st_mtime_ns for f in (repo / "data/preprocessed/images").iterdir()}
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "configs/params.yaml:sample.mode=3d"], repo)
    assert {"sample", "train", "evaluate"} <= _stages_run(out)
    # preprocess plans again (the spacing may depend on the mode: planner.coarsen_for_steps); this study keeps
    # its spacing, so every preprocessed case is kept as it was, none written again
    assert "preprocess" in _stages_run(out)
    assert {f.name: f.stat().st_mtime_ns for f in (repo / "data/preprocessed/images").iterdir()} == volumes
    meta = json.loads((repo / "models/model/fold_0/model.json").read_text())
    assert meta["spatial_dims"] == 3
    per_case = pd.read_csv(repo / "metrics/per_case.csv")
    assert per_case.dice.between(0, 1).all() and len(per_case) == 6


def test_cross_validation_killed_in_fold_3_resumes_fold_3_only(repo: Path, first_run: str) -> None:
    """cv.folds [0..3]: every fold trains as train@k; kill -9 during fold 3, rerun: only fold 3 resumes."""
    from pipeline.training.trainer import CHECKPOINT

    params_path = repo / "configs/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["sample"]["mode"] = "2d"
    params["train"] |= {"epochs": 6, "iters_per_epoch": 2}
    params["cv"] = {"folds": [0, 1, 2, 3]}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = repo / "models/checkpoint/fold_3" / CHECKPOINT
    deadline = time.monotonic() + 900
    while _checkpoint_epoch(ckpt) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the repro finished before fold 3 could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training process it started
    proc.wait()
    killed_at = _checkpoint_epoch(ckpt)
    assert 1 <= killed_at < 5
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"train@0", "train@1", "train@2"} <= set(lock) and "train@3" not in lock
    (repo / ".dvc/tmp/rwlock").unlink(missing_ok=True)  # left by the killed dvc process
    out = _run([sys.executable, "-m", "dvc", "repro"], repo)
    ran = set(re.findall(r"Running stage '([a-z]+@?[0-9]*)'", out))
    assert "train@3" in ran and not {"train@0", "train@1", "train@2"} & ran, out
    assert {"crossval@3", "pool", "evaluate"} <= ran, out
    assert f"resuming from models/checkpoint/fold_3/{CHECKPOINT} after epoch {killed_at}" in out
    # the pooled out-of-fold table: every non-test case exactly once, with its fold
    splits = json.loads((repo / "data/splits.json").read_text())
    oof = pd.read_csv(repo / "metrics/cv/per_case.csv")
    assert oof.groupby(["case_id", "class_name"]).size().eq(1).all()
    cases = oof.drop_duplicates("case_id")
    assert sorted(cases.case_id) == sorted(c for f in splits["folds"] for c in f)
    assert all(c in splits["folds"][f] for c, f in zip(cases.case_id, cases.fold, strict=True))
    cv = json.loads((repo / "metrics/cv/summary.json").read_text())
    assert cv["complete"] and set(cv["folds"]) == {"fold_0", "fold_1", "fold_2", "fold_3"}
    post = json.loads((repo / "models/model/postprocessing.json").read_text())
    assert set(post["classes"]) == set(oof.class_name) and post == cv["postprocessing"]
    # the test set: the ensemble of the four folds beside fold 0 alone
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["ensemble"]["folds"] == ["fold_0", "fold_1", "fold_2", "fold_3"]
    assert summary["ensemble"]["n_pairs"] == summary["n_cases"]
    report = (repo / "metrics/report.html").read_text()
    assert "Cross-validation (out-of-fold)" in report and "Ensemble vs single fold" in report
    assert "Methods and results" in report and "The ensemble of 4 folds" in report


def _checkpoint_epoch(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not written yet or being replaced
        return -1
