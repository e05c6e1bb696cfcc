"""Tests for pipeline.evaluation.lineage: dvc.lock hashes, git commit, versions, seeds, device."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import yaml

from pipeline.config import from_dict
from pipeline.evaluation.lineage import dvc_lock_hashes, git_info, library_versions, lineage_tags

ROOT = Path(__file__).resolve().parents[1]

LOCK = {
    "schema": "2.0",
    "stages": {
        "preprocess": {
            "cmd": "python -m pipeline.stages.preprocess",
            "deps": [
                {"path": "/data/msd_hippocampus", "hash": "md5", "md5": "raw111.dir", "nfiles": 401},
                {"path": "pipeline/stages/preprocess.py", "hash": "md5", "md5": "code222"},
            ],
            "outs": [{"path": "data/preprocessed", "hash": "md5", "md5": "pre333.dir"}],
        },
        "sample": {
            "deps": [{"path": "data/preprocessed", "hash": "md5", "md5": "pre333.dir"}],
            "outs": [
                {"path": "data/splits.json", "hash": "md5", "md5": "split444"},
                {"path": "data/samples", "hash": "md5", "md5": "samp555.dir"},
            ],
        },
        "train": {"outs": [{"path": "models/model", "hash": "md5", "md5": "model666.dir"}]},
        "evaluate": {"outs": [{"path": "data/predictions", "hash": "md5", "md5": "stale777.dir"}]},
    },
}


def _write_lock(folder: Path) -> Path:
    path = folder / "dvc.lock"
    path.write_text(yaml.safe_dump(LOCK))
    return path


def test_dvc_lock_outputs_and_external_data(tmp_path: Path) -> None:
    hashes = dvc_lock_hashes(_write_lock(tmp_path))
    assert hashes == {
        "dvc.dep./data/msd_hippocampus": "raw111.dir",
        "dvc.out.data/preprocessed": "pre333.dir",
        "dvc.out.data/samples": "samp555.dir",
        "dvc.out.data/splits.json": "split444",
        "dvc.out.models/model": "model666.dir",
    }  # no code deps, no stage-produced deps, nothing from the (stale) evaluate stage


def test_missing_or_broken_lock_gives_no_hashes(tmp_path: Path) -> None:
    assert dvc_lock_hashes(tmp_path / "dvc.lock") == {}
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert dvc_lock_hashes(tmp_path / "dvc.lock") == {}


def test_git_info_reads_the_commit_and_degrades_outside_git(tmp_path: Path) -> None:
    info = git_info(ROOT)
    assert re.fullmatch(r"[0-9a-f]{40}", info["git.commit"])
    assert info["git.dirty"] in ("true", "false")
    assert git_info(tmp_path) == {"git.commit": "unknown", "git.dirty": "unknown"}


def test_library_versions() -> None:
    versions = library_versions()  # from package metadata: nothing heavy is imported
    assert versions["lib.torch"] == importlib.metadata.version("torch")
    assert re.match(r"\d+\.\d+", versions["lib.monai"])
    assert {"lib.python", "lib.numpy", "lib.mlflow", "lib.dvc"} <= set(versions)


def test_lineage_tags_all_prefixed_with_seeds_device_and_model(tmp_path: Path) -> None:
    cfg = from_dict({"train": {"seed": 7}, "evaluate": {"seed": 3}, "data": {"root": "/data/msd_hippocampus"}})
    meta = {"weights_sha256": "abc", "epoch": 11, "mlflow": {"run_id": "r1"}}
    tags = lineage_tags(cfg, device="cpu", lock_path=_write_lock(tmp_path), repo_dir=ROOT, model_meta=meta)
    assert all(k.startswith("lineage.") and isinstance(v, str) for k, v in tags.items())
    assert tags["lineage.seed.train"] == "7" and tags["lineage.seed.evaluate"] == "3"
    assert tags["lineage.device"] == "cpu"
    assert tags["lineage.dvc.out.models/model"] == "model666.dir"
    assert tags["lineage.model.weights_sha256"] == "abc" and tags["lineage.model.train_run_id"] == "r1"
    assert tags["lineage.data.root"] == "/data/msd_hippocampus"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["lineage.git.commit"])
