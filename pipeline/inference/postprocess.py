"""Post-processing of label maps on the scan's grid."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """Keep only the largest connected component (26-connectivity) of each class; the rest becomes 0.

    Works in place on ``labels`` (and returns it). Equivalent to MONAI's
    ``KeepLargestConnectedComponent(applied_labels=classes, independent=True)``, computed with
    ``scipy.ndimage`` (MONAI's CPU path needs scikit-image, which is not a dependency) and only inside
    each class's bounding box.
    """
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for k in classes:
        box = ndimage.find_objects((labels == k).astype(np.uint8))
        if not box or box[0] is None:
            continue
        sub = labels[box[0]]
        mask = sub == k
        components, n = ndimage.label(mask, structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        sub[mask & (components != int(sizes.argmax()))] = 0
    return labels
