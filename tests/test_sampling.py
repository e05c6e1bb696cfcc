import numpy as np

from pipeline.sampling.locations import MAX_LOCATIONS, class_locations


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


def test_the_sample_table_carries_each_cases_group_as_text(tmp_path) -> None:
    """Validation pools a patient's slices: the table keeps the split's groups (and ids such as ``001``) as text."""
    from pipeline.sampling.locations import build_samples, read_samples

    pre = tmp_path / "pre"
    (pre / "labels").mkdir(parents=True)
    for cid in ("001", "002", "003"):
        np.save(pre / "labels" / f"{cid}.npy", np.ones((1, 4, 4, 1), np.uint8))
    assignment = {"001": "val", "002": "val", "003": "train"}
    build_samples(pre, tmp_path / "s", assignment, 2, "2d", 2, 0, {"001": "07", "002": "07"})
    table = read_samples(tmp_path / "s")
    assert table["case_id"].tolist() == ["001", "002", "003"]
    assert table["group"].fillna("").tolist() == ["07", "07", ""]
    build_samples(pre, tmp_path / "s", assignment, 2, "2d", 2, 0)  # no groups: no column
    assert "group" not in read_samples(tmp_path / "s").columns
