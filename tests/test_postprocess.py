"""Post-processing: the largest connected component per class."""

from __future__ import annotations

import numpy as np

from pipeline.inference.postprocess import keep_largest_component


def test_keep_largest_component_per_class() -> None:
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[8:10, 8:10, 8:10] = 1  # 8 voxels: removed
    labels[4, 4, 4] = 1  # touches the big one diagonally: kept (26-connectivity)
    labels[6:8, 0:2, 0:2] = 2  # 8 voxels
    labels[0, 10, 10] = 2  # removed
    out = keep_largest_component(labels.copy(), [1, 2])
    assert (out == 1).sum() == 28 and out[4, 4, 4] == 1 and out[9, 9, 9] == 0
    assert (out == 2).sum() == 8 and out[0, 10, 10] == 0
