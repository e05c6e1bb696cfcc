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
