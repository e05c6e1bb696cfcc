"""Training: resume after kill -9 gives the uninterrupted result; same seed, same per-case table; DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, tiny_params, write_params

from pipeline.training.trainer import CHECKPOINT

pytestmark = pytest.mark.slow

# each tiny study names its own MLflow store; drop what in-process tests may have exported
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(ROOT)}


def _stage(stage: str, config: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{stage}", "--config", str(config)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=config.parent,  # MLflow writes artifacts under the working directory
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def library_warnings(stderr: str) -> list[str]:
    """Lines of a stage's stderr that are warnings from libraries (the pipeline's own are allowed)."""
    lines = stderr.replace("\r", "\n").splitlines()
    return [line for line in lines if re.search(r"warn", line, re.I) and " pipeline." not in line]


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not written yet or being replaced
        return -1


def test_kill_and_resume_equals_uninterrupted_and_same_seed_same_table(tiny_study: Path) -> None:
    config_a = write_params(tiny_study / "a.yaml", tiny_params(tiny_study / "a"))
    config_b = write_params(tiny_study / "b.yaml", tiny_params(tiny_study / "b"))
    _stage("train", config_a)

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.train", "--config", str(config_b)],
        env=ENV,
        cwd=tiny_study,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tiny_study / "b" / "checkpoint" / CHECKPOINT
    deadline = time.monotonic() + 900  # generous: a loaded machine may take minutes per tiny epoch
    while _checkpoint_epoch(ckpt) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the tiny run longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_epoch(ckpt)
    assert 1 <= killed_at < 3
    shutil.rmtree(tiny_study / "b" / "model", ignore_errors=True)  # as DVC removes the stage outputs
    resumed = _stage("train", config_b)
    assert f"resuming from {ckpt} after epoch {killed_at}" in resumed.stderr

    state_a = torch.load(tiny_study / "a" / "checkpoint" / CHECKPOINT, weights_only=True)
    state_b = torch.load(ckpt, weights_only=True)
    for name, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][name]), name
    log_a = pd.read_csv(tiny_study / "a" / "train_log.csv")
    log_b = pd.read_csv(tiny_study / "b" / "train_log.csv")
    pd.testing.assert_series_equal(log_a.val_dice_mean, log_b.val_dice_mean)
    assert len(log_b) == 4

    _stage("evaluate", config_a)
    _stage("evaluate", config_b)
    per_a = pd.read_csv(tiny_study / "a" / "metrics" / "per_case.csv").drop(columns="predict_seconds")
    per_b = pd.read_csv(tiny_study / "b" / "metrics" / "per_case.csv").drop(columns="predict_seconds")
    pd.testing.assert_frame_equal(per_a, per_b)


def test_ddp_two_cpu_processes(tiny_study: Path) -> None:
    config = write_params(tiny_study / "ddp.yaml", tiny_params(tiny_study / "ddp", epochs=2, threads=1))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pipeline.stages.train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tiny_study,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "x 2 processes" in proc.stderr
    log = pd.read_csv(tiny_study / "ddp" / "train_log.csv")
    assert len(log) == 2 and log.val_dice_mean.notna().all()
    assert (tiny_study / "ddp" / "model" / "model.pt").is_file()


def test_fold_all_trains_on_every_non_test_case_and_keeps_the_last_epoch(tiny_study: Path) -> None:
    params = tiny_params(tiny_study / "all", epochs=3, val_every=1)
    params["sample"] |= {"fold": "all", "out_dir": str(tiny_study / "all" / "samples")}
    config = write_params(tiny_study / "all.yaml", params)
    _stage("sample", config)
    samples = pd.read_csv(tiny_study / "all" / "samples" / "samples.csv")
    assert set(samples.split) == {"train", "test"} and (samples.split == "train").sum() == 6
    proc = _stage("train", config)
    assert "6 train / 0 val cases" in proc.stderr
    assert "no validation cases: kept the last epoch (2)" in proc.stderr
    # quiet, honest output: no library warnings (e.g. MLflow's about predict's type hints), no dice=nan
    assert library_warnings(proc.stderr) == [] and "nan" not in proc.stderr.lower()
    assert "train: 100%" in proc.stderr and "loss=" in proc.stderr  # the progress bar stays
    meta = json.loads((tiny_study / "all" / "model" / "model.json").read_text())
    assert meta["epoch"] == 2 and meta["val_dice_mean"] is None
    log = pd.read_csv(tiny_study / "all" / "train_log.csv")
    assert len(log) == 3 and not any(c.startswith("val_dice") for c in log.columns)
    proc = _stage("evaluate", config)  # report without validation curves
    assert library_warnings(proc.stderr) == [], proc.stderr
    assert (tiny_study / "all" / "metrics" / "report.html").is_file()


def test_dynunet_with_deep_supervision_trains_predicts_and_evaluates(tiny_study: Path) -> None:
    model = {"name": "dynunet", "base_width": 4, "depth": 2, "deep_supervision": True}
    config = write_params(tiny_study / "ds.yaml", tiny_params(tiny_study / "ds", epochs=2, model=model))
    _stage("train", config)
    log = pd.read_csv(tiny_study / "ds" / "train_log.csv")
    assert len(log) == 2 and log.val_dice_mean.notna().all()
    meta = json.loads((tiny_study / "ds" / "model" / "model.json").read_text())
    assert meta["model"]["deep_supervision"] is True
    _stage("evaluate", config)  # rebuilds the network with its heads from the model folder, predicts with logits only
    per_case = pd.read_csv(tiny_study / "ds" / "metrics" / "per_case.csv")
    assert per_case.dice.notna().all() and len(per_case) > 0


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "monai_unet", "deep_supervision": True}, "deep_supervision applies to dynunet only"),
        ({"name": "classic_unet", "full_resolution_width": 4}, "full_resolution_width applies to monai_unet only"),
    ],
)
def test_a_model_option_the_network_cannot_take_stops_naming_the_config(
    tiny_study: Path, model: dict, message: str
) -> None:
    from pipeline.config import ConfigError
    from pipeline.stages import train

    run = tiny_study / "badmodel"
    config = write_params(tiny_study / "badmodel.yaml", tiny_params(run, model={"base_width": 8, "depth": 2} | model))
    with pytest.raises(ConfigError, match=f"^{config}: train.model: {message}"):
        train.main(["--config", str(config)])
    assert not run.exists()  # no model folder, checkpoint or log written
