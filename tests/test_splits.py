"""Case-level splits: test hold-out and folds (grouped), made before planning; test cases never reach the plan."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from pipeline.core.dataset import read_dataset
from pipeline.core.splits import fold_assignment, load_or_make_splits, make_splits, non_test_cases

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


def test_a_small_dataset_gets_as_many_folds_as_it_has_groups(tmp_path: Path) -> None:
    """Four cases (BraTS examples) with the default 5 folds: 3 non-test cases make 3 folds, not a crash."""
    ids = ["a", "b", "c", "d"]
    s = load_or_make_splits(tmp_path / "splits.json", ids, 0.25, 5, 0)
    assert len(s["test"]) == 1 and len(s["folds"]) == 3 and all(len(f) == 1 for f in s["folds"])
    assert s["folds_requested"] == 5
    assert load_or_make_splits(tmp_path / "splits.json", ids, 0.25, 5, 0) == s  # reused, not rewritten
    with pytest.raises(ValueError, match="at least 2"):
        make_splits(["a", "b"], 0.5, 5, 0)


def test_sample_stage_rejects_a_bad_fold_before_writing(tmp_path: Path) -> None:
    from pipeline.config import ConfigError
    from pipeline.stages import sample

    splits = tmp_path / "splits.json"
    config = tmp_path / "params.yaml"
    config.write_text(f"split:\n  folds: 3\n  file: {splits}\nsample:\n  fold: 3\n  out_dir: {tmp_path / 's'}\n")
    with pytest.raises(ConfigError, match=r"params.yaml: sample.fold 3 out of range 0..2"):
        sample.main(["--config", str(config)])
    assert not splits.exists() and not (tmp_path / "s").exists()


def test_groups_stay_whole_in_test_and_folds() -> None:
    groups = {c: f"patient_{i // 3}" for i, c in enumerate(IDS)}  # 8 patients, 3 scans each (the last 2)
    for seed in range(5):
        s = make_splits(IDS, 0.25, 3, seed, groups)
        where = {c: "test" for c in s["test"]} | {c: k for k, f in enumerate(s["folds"]) for c in f}
        assert sorted(where) == IDS
        for patient in set(groups.values()):
            places = {where[c] for c in IDS if groups[c] == patient}
            assert len(places) == 1, (seed, patient, places)
        assert len(s["test"]) >= round(0.25 * len(IDS)) and s["groups"] == groups
    # grouping changes the split file's identity: an old ungrouped split is not reused
    assert make_splits(IDS, 0.25, 3, 0)["cases_sha"] != make_splits(IDS, 0.25, 3, 0, groups)["cases_sha"]


def test_without_groups_the_split_is_the_plain_per_case_one() -> None:
    """A random permutation: the first cases are the test set, the rest dealt round-robin into folds."""
    s = make_splits(IDS, 0.2, 4, 3)
    order = [sorted(IDS)[i] for i in np.random.default_rng(3).permutation(len(IDS))]
    n_test = round(0.2 * len(IDS))
    assert s["test"] == sorted(order[:n_test])
    assert s["folds"] == [sorted(order[n_test:][k::4]) for k in range(4)]
    assert "groups" not in s


def test_the_datasets_own_test_cases_are_the_test_set(tmp_path: Path) -> None:
    given = IDS[:3]
    s = make_splits(IDS, 0.2, 4, 0, given_test=given)
    assert s["test"] == given and s["test_given"] is True
    assert sorted(non_test_cases(s)) == IDS[3:]  # every other case trains or validates
    # the split file is made again when which cases the dataset gives as test changes
    path = tmp_path / "splits.json"
    assert load_or_make_splits(path, IDS, 0.2, 4, 0, given_test=given) == s
    assert load_or_make_splits(path, IDS, 0.2, 4, 0, given_test=IDS[:2])["test"] == IDS[:2]
    assert "test_given" not in load_or_make_splits(path, IDS, 0.2, 4, 0)
    with pytest.raises(ValueError, match="0 non-test case group"):
        make_splits(IDS, 0.2, 4, 0, given_test=IDS)


def _tiny_ct_dataset(root: Path, n: int = 8, groups: list[str] | None = None) -> Path:
    """``n`` small CT-like cases (one structure), MSD layout; optional ``group`` per training entry."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(n):
        image = rng.normal(-500, 50, (20, 18, 8)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        label[5:12, 4:12, 2:6] = 1
        image[label == 1] = rng.normal(40 + 5 * i, 10, int(label.sum()))
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{i}.nii.gz")
        entry = {"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
        if groups:
            entry["group"] = groups[i]
        training.append(entry)
    meta = {"name": "tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _preprocess(tmp: Path, root: Path, split: dict | None = None) -> Path:
    from pipeline.stages import preprocess

    params = {
        "data": {"root": str(root), "layout": "msd"},
        "split": {"file": str(tmp / "splits.json"), "test_fraction": 0.25, "folds": 2, **(split or {})},
        "preprocess": {"out_dir": str(tmp / "pre"), "workers": 1, "target_spacing": [1.0, 1.0, 2.0]},
    }
    config = tmp / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    assert preprocess.main(["--config", str(config)]) == 0
    return tmp / "pre"


def test_a_test_case_never_reaches_the_plan_or_the_preprocessed_data(tmp_path: Path) -> None:
    root = _tiny_ct_dataset(tmp_path / "raw")
    pre = _preprocess(tmp_path, root)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits["test"]) == 2
    plans = (pre / "plans.json").read_bytes()
    assert json.loads(plans)["fingerprint"]["n_cases"] == 6  # planned from the 6 non-test cases
    written = {p.relative_to(pre): p.read_bytes() for p in sorted(pre.rglob("*.npy"))}
    assert {p.stem for p in written} == set(non_test_cases(splits))  # test cases are not preprocessed
    # a test case's scan changes (far brighter, another label): nothing training sees changes
    test_id = splits["test"][0]
    path = root / "imagesTr" / f"{test_id}.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 3 + 900, img.affine), path)
    _preprocess(tmp_path, root)
    assert json.loads((tmp_path / "splits.json").read_text()) == splits
    assert (pre / "plans.json").read_bytes() == plans
    assert {p.relative_to(pre): p.read_bytes() for p in sorted(pre.rglob("*.npy"))} == written


def test_the_datasets_labelled_test_entries_are_tested_and_never_planned(tmp_path: Path) -> None:
    """An MSD ``test`` list with labels (the BraTS examples): those cases are the test set and every training case
    is planned; ``split.dataset_test: false`` pools them and draws ``test_fraction``."""
    root = _tiny_ct_dataset(tmp_path / "raw")
    meta = json.loads((root / "dataset.json").read_text())
    meta["test"], meta["training"] = meta["training"][:2], meta["training"][2:]
    (root / "dataset.json").write_text(json.dumps(meta))
    pre = _preprocess(tmp_path, root)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert splits["test"] == ["c0", "c1"] and splits["test_given"]
    assert json.loads((pre / "plans.json").read_text())["fingerprint"]["n_cases"] == 6
    pre = _preprocess(tmp_path, root, {"dataset_test": False})
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits["test"]) == 2 and "test_given" not in splits and splits["test"] != ["c0", "c1"]


def test_dataset_json_groups_reach_the_split_file(tmp_path: Path) -> None:
    groups = ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
    root = _tiny_ct_dataset(tmp_path / "raw", groups=groups)
    assert [c.group for c in read_dataset(root, "msd").cases] == groups
    _preprocess(tmp_path, root)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert splits["groups"] == {f"c{i}": g for i, g in enumerate(groups)}
    assert len(splits["test"]) == 2 and splits["groups"][splits["test"][0]] == splits["groups"][splits["test"][1]]


def test_manifest_group_column(tmp_path: Path) -> None:
    root = _tiny_ct_dataset(tmp_path / "raw", n=3)
    rows = ["case_id,image,label,group"]
    rows += [f"c{i},imagesTr/c{i}.nii.gz,labelsTr/c{i}.nii.gz,{'ab'[i % 2]}" for i in range(3)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert [c.group for c in read_dataset(root, "csv").cases] == ["a", "b", "a"]
