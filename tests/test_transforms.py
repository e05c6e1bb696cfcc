"""The training patch sampler (the deterministic preprocessing chain is covered in test_preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import Compose

from pipeline.sampling import class_locations
from pipeline.transforms import class_ratios, training_sampler


def _volume(shape: tuple[int, int, int], box: tuple[slice, slice, slice]) -> dict:
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)[None]
    locs = class_locations(label, 2, np.random.default_rng(0))
    return {"image": image, "label": label[None], "locations": [locs["c0"], locs["c1"]]}


FAR = slice(50, 53)  # foreground far along the axis where the volume is larger than the patch
NEAR = slice(2, 5)


@pytest.mark.parametrize(
    ("shape", "box", "patch", "slice_axis"),
    [
        # smaller than the patch along some axes, larger along another: padding before the crop would
        # change the volume's shape and send the stored flat indices to the wrong voxels
        ((60, 20, 30), (FAR, NEAR, NEAR), (16, 32, 32), None),
        ((20, 30, 60), (NEAR, NEAR, FAR), (32, 32), 2),
        ((60, 30, 20), (FAR, NEAR, NEAR), (32, 32), 0),
    ],
)
def test_foreground_patches_contain_foreground(
    shape: tuple[int, int, int], box: tuple[slice, ...], patch: tuple[int, ...], slice_axis: int | None
) -> None:
    vol = _volume(shape, box)
    sampler = Compose(training_sampler(patch, 2, foreground_ratio=1.0, slice_axis=slice_axis))
    sampler.set_random_state(seed=0)
    for _ in range(20):
        (out,) = sampler(dict(vol))
        assert tuple(out["image"].shape[1:]) == patch and tuple(out["label"].shape[1:]) == patch
        assert (np.asarray(out["label"]) == 1).any()


def test_background_patches_are_padded_to_size() -> None:
    vol = _volume((20, 30, 60), (slice(2, 5), slice(3, 6), slice(50, 53)))
    sampler = Compose(training_sampler((32, 32, 16), 2, foreground_ratio=0.0))
    sampler.set_random_state(seed=1)
    (out,) = sampler(dict(vol))
    assert tuple(out["image"].shape) == (1, 32, 32, 16) and tuple(out["label"].shape) == (1, 32, 32, 16)


def test_class_ratios() -> None:
    assert class_ratios(3, 0.5) == pytest.approx([0.5, 0.25, 0.25])
    assert class_ratios(2, 1.0) == pytest.approx([0.0, 1.0])
