import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.sampling.locations import (
    MAX_LOCATIONS,
    class_locations,
    fold_assignment,
    load_or_make_splits,
    make_splits,
)

IDS = [f"case_{i:03d}" for i in range(23)]


def test_splits_are_by_case_disjoint_and_complete() -> None:
    s = make_splits(IDS, test_fraction=0.2, folds=4, seed=1)
    assert len(s["test"]) == round(0.2 * len(IDS))
    everything = s["test"] + [c for f in s["folds"] for c in f]
    assert sorted(everything) == sorted(IDS) and len(set(everything)) == len(IDS)
    for fold in range(4):
        a = fold_assignment(s, fold)
        assert set(a) == set(IDS)
        assert {c for c, v in a.items() if v == "val"} == set(s["folds"][fold])
        assert {c for c, v in a.items() if v == "test"} == set(s["test"])


def test_splits_deterministic_and_seed_dependent() -> None:
    assert make_splits(IDS, 0.2, 5, 0) == make_splits(list(reversed(IDS)), 0.2, 5, 0)
    assert make_splits(IDS, 0.2, 5, 0)["test"] != make_splits(IDS, 0.2, 5, 1)["test"]


def test_split_file_written_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    first = load_or_make_splits(path, IDS, 0.2, 5, 0)
    mtime = path.stat().st_mtime_ns
    again = load_or_make_splits(path, IDS, 0.2, 5, 0)
    assert again == first and path.stat().st_mtime_ns == mtime
    assert json.loads(path.read_text())["version"] == 1
    # other cases: a new split is written
    changed = load_or_make_splits(path, IDS[:-1], 0.2, 5, 0)
    assert IDS[-1] not in changed["test"] + [c for f in changed["folds"] for c in f]


def test_fold_all_trains_every_non_test_case() -> None:
    s = make_splits(IDS, 0.2, 4, 1)
    a = fold_assignment(s, "all")
    assert {c for c, v in a.items() if v == "train"} == {c for f in s["folds"] for c in f}
    assert {c for c, v in a.items() if v == "test"} == set(s["test"]) and "val" not in a.values()


def test_bad_fold_and_folds() -> None:
    s = make_splits(IDS, 0.2, 5, 0)
    with pytest.raises(ValueError, match="fold 5 out of range"):
        fold_assignment(s, 5)
    with pytest.raises(ValueError, match="out of range"):
        fold_assignment(s, "first")
    with pytest.raises(ValueError, match="folds must be"):
        make_splits(IDS, 0.2, 1, 0)


def test_sample_stage_rejects_a_bad_fold_before_writing(tmp_path: Path) -> None:
    from pipeline.config import ConfigError
    from pipeline.stages import sample

    splits = tmp_path / "splits.json"
    config = tmp_path / "params.yaml"
    config.write_text(f"sample:\n  folds: 3\n  fold: 3\n  splits_file: {splits}\n  out_dir: {tmp_path / 's'}\n")
    with pytest.raises(ConfigError, match=r"params.yaml: sample.fold 3 out of range 0..2"):
        sample.main(["--config", str(config)])
    assert not splits.exists() and not (tmp_path / "s").exists()


def test_class_locations_point_at_their_class() -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((20, 30, 10), np.uint8)
    label[2:6, 3:9, 1:4] = 1
    label[10:12, 10:12, 5:6] = 2
    locs = class_locations(label, 3, rng)
    flat = label.reshape(-1)
    assert (flat[locs["c1"]] == 1).all() and locs["c1"].size == (label == 1).sum()
    assert (flat[locs["c2"]] == 2).all() and locs["c2"].size == 4
    assert locs["c0"].size == min(MAX_LOCATIONS, label.size)
