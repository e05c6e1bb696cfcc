"""pipeline.tools.download against a tiny MSD archive served from a file:// URL (the real download path, no mocks)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.dataset import read_msd
from pipeline.tools.download import DownloadError, download_msd, main

TASK = "Task04_Hippocampus"


@pytest.fixture()
def archive(tmp_path: Path) -> tuple[Path, str]:
    """A tiny ``Task04_Hippocampus.tar`` (2 cases of 8x8x6) and its md5."""
    task = tmp_path / "src" / TASK
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in (1, 2):
        name = f"hippocampus_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((8, 8, 6), dtype=np.float32), np.eye(4)), task / "imagesTr" / name)
        label = (rng.random((8, 8, 6)) > 0.5).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Hippocampus", "labels": {"0": "background", "1": "hippocampus"}, "modality": {"0": "MRI"}}
    meta |= {"numTraining": 2, "training": training, "test": []}
    (task / "dataset.json").write_text(json.dumps(meta))
    tar_path = tmp_path / "mirror" / f"{TASK}.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tar:
        tar.add(task, arcname=TASK)
    return tar_path, hashlib.md5(tar_path.read_bytes()).hexdigest()


def test_cli_downloads_verifies_and_extracts(archive, tmp_path, capsys):
    tar_path, md5 = archive
    out = tmp_path / "data"
    assert main(["msd", TASK, str(out), "--url", tar_path.as_uri(), "--md5", md5]) == 0
    folder = out / TASK
    assert capsys.readouterr().out.strip() == str(folder)
    info = read_msd(folder)
    assert not info.problems
    assert [c.case_id for c in info.cases] == ["hippocampus_001", "hippocampus_002"]
    assert all(c.label is not None and c.label.is_file() for c in info.cases)
    assert not list(out.glob(".*partial*"))  # the temporary extraction folder is gone

    # re-run: skipped, even though the mirror has disappeared
    tar_path.unlink()
    assert download_msd(TASK, out, url=tar_path.as_uri(), md5=md5) == folder


def test_wrong_md5_is_one_error_line_and_leaves_no_task_folder(archive, tmp_path, capsys):
    tar_path, _ = archive
    out = tmp_path / "data"
    assert main(["msd", TASK, str(out), "--url", tar_path.as_uri(), "--md5", "0" * 32]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: md5 checksum mismatch")
    assert not any("Traceback" in line for line in err)
    assert not (out / TASK).exists()
    assert not (out / f"{TASK}.tar").exists()
    assert not list(out.glob(".*partial*"))


def test_unreachable_url_is_one_error_line(tmp_path, capsys):
    missing = (tmp_path / "nowhere" / f"{TASK}.tar").as_uri()
    assert main(["msd", TASK, str(tmp_path / "data"), "--url", missing]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot download {missing}")
    assert not (tmp_path / "data" / TASK).exists()


def test_stale_partial_archive_is_downloaded_again(archive, tmp_path):
    tar_path, md5 = archive
    out = tmp_path / "data"
    out.mkdir()
    (out / f"{TASK}.tar").write_bytes(tar_path.read_bytes()[:1000])  # an interrupted copy
    folder = download_msd(TASK, out, url=tar_path.as_uri(), md5=md5)
    assert len(read_msd(folder).cases) == 2


def test_wrong_md5_keeps_a_good_archive_until_a_replacement_verifies(archive, tmp_path, capsys):
    tar_path, md5 = archive
    out = tmp_path / "data"
    out.mkdir()
    good = tar_path.read_bytes()
    (out / f"{TASK}.tar").write_bytes(good)  # a good archive from an earlier run
    assert main(["msd", TASK, str(out), "--url", tar_path.as_uri(), "--md5", "0" * 32]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: md5 checksum mismatch")
    assert (out / f"{TASK}.tar").read_bytes() == good
    assert not list(out.glob(".*download*")) and not list(out.glob(".*partial*"))
    # with the right md5 the kept archive is used as it is: no download needed
    tar_path.unlink()
    assert len(read_msd(download_msd(TASK, out, url=tar_path.as_uri(), md5=md5)).cases) == 2


def test_archive_without_the_task_folder_is_rejected(tmp_path):
    src = tmp_path / "Other"
    src.mkdir()
    (src / "readme.txt").write_text("not a task")
    tar_path = tmp_path / f"{TASK}.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src, arcname="Other")
    md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    out = tmp_path / "data"
    with pytest.raises(DownloadError, match="has no Task04_Hippocampus/dataset.json"):
        download_msd(TASK, out, url=tar_path.as_uri(), md5=md5)
    assert not (out / TASK).exists()
    assert not list(out.glob(".*partial*"))


def test_unknown_task(tmp_path, capsys):
    with pytest.raises(ValueError, match="known tasks: Task01_BrainTumour, .*Task10_Colon"):
        download_msd("Task99_Nothing", tmp_path)
    assert main(["msd", "Task99_Nothing", str(tmp_path)]) == 1
    assert "unknown Decathlon task 'Task99_Nothing'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_official_urls_and_md5s_come_from_monai():
    from monai.apps import DecathlonDataset

    from pipeline.tools.download import MD5, TASKS

    assert TASKS[TASK] == DecathlonDataset.resource[TASK] and MD5[TASK] == DecathlonDataset.md5[TASK]
