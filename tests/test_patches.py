"""Batch-level patch sampling: MONAI's crop windows, class ratios, 2D slices, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import SpatialCrop, SpatialPad
from monai.transforms.utils import correct_crop_centers

from pipeline.sampling.locations import class_locations
from pipeline.sampling.patches import PatchBatches, class_ratios, crop_slices, pad_widths


def test_crop_windows_match_monai() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = rng.integers(1, 30, size=3)
        size = rng.integers(1, 40, size=3)
        center = [int(rng.integers(n)) for n in shape]
        x = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape)
        fixed = correct_crop_centers(center, size.tolist(), shape.tolist(), allow_smaller=True)
        roi = [int(min(s, n)) for s, n in zip(size, shape, strict=True)]
        expected = SpatialPad(size.tolist())(SpatialCrop(roi_center=fixed, roi_size=roi)(x))
        ours = np.pad(x.numpy()[(slice(None), *crop_slices(center, size, shape))], [(0, 0), *pad_widths(roi, size)])
        np.testing.assert_array_equal(ours, np.asarray(expected))


def _volumes(n: int = 4, shape: tuple[int, int, int] = (20, 24, 16)) -> list[dict]:
    rng = np.random.default_rng(1)
    vols = []
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        label[5 + i : 8 + i, 6:9, 4:7] = 1
        label[12:14, 15:18, 10 - i : 12 - i] = 2
        image = rng.normal(size=(2, *shape)).astype(np.float32)
        locs = class_locations(label, 3, rng)
        vols.append({"image": image, "label": label[None], "locations": [locs[f"c{k}"] for k in range(3)]})
    return vols


def test_batches_shapes_types_and_determinism() -> None:
    vols = _volumes()
    batches = PatchBatches(vols, (16, 16, 16), [0.5, 0.25, 0.25], batch_size=3, n_batches=5, seed=7)
    assert len(batches) == 5
    b = batches[2]
    assert b["image"].shape == (3, 2, 16, 16, 16) and b["image"].dtype == torch.float32
    assert b["label"].shape == (3, 1, 16, 16, 16) and b["label"].dtype == torch.int64
    again = PatchBatches(vols, (16, 16, 16), [0.5, 0.25, 0.25], batch_size=3, n_batches=5, seed=7)[2]
    assert torch.equal(b["image"], again["image"]) and torch.equal(b["label"], again["label"])
    other = PatchBatches(vols, (16, 16, 16), [0.5, 0.25, 0.25], batch_size=3, n_batches=5, seed=8)[2]
    assert not torch.equal(b["image"], other["image"])
    with pytest.raises(IndexError):
        batches[5]
    # padded where the volume is smaller than the patch (z: 16 -> 20, two zero slices each side)
    padded = PatchBatches(vols, (8, 8, 20), [1.0, 0.0, 0.0], batch_size=2, n_batches=1, seed=0)[0]
    assert padded["image"].shape == (2, 2, 8, 8, 20)
    assert (padded["image"][..., :2] == 0).all() and (padded["image"][..., -2:] == 0).all()


def test_patch_content_comes_from_the_volume() -> None:
    vols = _volumes(n=1)
    b = PatchBatches(vols, (8, 8, 8), [0.0, 1.0, 0.0], batch_size=4, n_batches=1, seed=3)[0]
    image, label = vols[0]["image"], vols[0]["label"]
    for i in range(4):
        # find the window: the patch is an exact sub-array of the volume
        hits = [
            (x, y, z)
            for x in range(image.shape[1] - 7)
            for y in range(image.shape[2] - 7)
            for z in range(image.shape[3] - 7)
            if np.array_equal(image[:, x : x + 8, y : y + 8, z : z + 8], b["image"][i].numpy())
        ]
        assert len(hits) == 1
        x, y, z = hits[0]
        np.testing.assert_array_equal(label[:, x : x + 8, y : y + 8, z : z + 8], b["label"][i].numpy())


def test_foreground_ratio_centres_patches_on_each_class() -> None:
    vols = _volumes()
    for k in (1, 2):
        ratios = [0.0, 0.0, 0.0]
        ratios[k] = 1.0
        b = PatchBatches(vols, (3, 3, 3), ratios, batch_size=16, n_batches=1, seed=k)[0]
        assert (b["label"][:, 0, 1, 1, 1] == k).all()  # the centre voxel is of that class
    # class 2 missing everywhere: its share goes to the classes that are present
    no2 = [{**v, "locations": [v["locations"][0], v["locations"][1], np.array([], np.int64)]} for v in vols]
    b = PatchBatches(no2, (3, 3, 3), [0.0, 0.5, 0.5], batch_size=8, n_batches=1, seed=0)[0]
    assert (b["label"][:, 0, 1, 1, 1] == 1).all()
    # no class with a positive ratio is present: uniformly random centres (like nnU-Net without foreground)
    b = PatchBatches(no2, (3, 3, 3), [0.0, 0.0, 1.0], batch_size=64, n_batches=1, seed=0)[0]
    assert (b["label"][:, 0, 1, 1, 1] == 0).any()


def test_foreground_share_holds_when_most_cases_have_no_foreground() -> None:
    """One picture per case, 2 of 10 showing the structure: half the samples still show it (not 10%)."""
    rng = np.random.default_rng(0)
    vols = []
    for i in range(10):
        label = np.zeros((1, 32, 32), np.uint8)
        if i in (3, 7):
            label[0, 10:14, 20:24] = 1
        locs = class_locations(label, 2, rng)
        image = rng.normal(size=(1, 1, 32, 32)).astype(np.float32)
        vols.append({"image": image, "label": label[None], "locations": [locs["c0"], locs["c1"]]})
    batch = PatchBatches(vols, (16, 16), [0.5, 0.5], batch_size=400, n_batches=1, seed=0, slice_axis=0)[0]
    shown = (batch["label"] == 1).flatten(1).any(1).float().mean().item()
    assert 0.5 <= shown <= 0.7  # 0.5 drawn for the structure + 0.5 x 2/10 by chance
    only_background = PatchBatches(vols, (16, 16), [1.0, 0.0], batch_size=400, n_batches=1, seed=0, slice_axis=0)[0]
    assert (only_background["label"] == 1).flatten(1).any(1).float().mean().item() < 0.4


def test_2d_slices_along_the_configured_axis() -> None:
    vols = _volumes()
    for axis in (0, 1, 2):
        b = PatchBatches(vols, (10, 12), [0.0, 1.0, 0.0], batch_size=4, n_batches=1, seed=axis, slice_axis=axis)[0]
        assert b["image"].shape == (4, 2, 10, 12) and b["label"].shape == (4, 1, 10, 12)
        assert (b["label"] == 1).any(dim=(1, 2, 3)).all()  # each slice goes through class 1
    with pytest.raises(ValueError, match="slice_axis"):
        PatchBatches(vols, (10, 12), [1.0, 0.0, 0.0], batch_size=1, n_batches=1, seed=0)


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
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)[None]
    locs = class_locations(label, 2, np.random.default_rng(0))
    vol = {"image": image, "label": label[None], "locations": [locs["c0"], locs["c1"]]}
    batch = PatchBatches([vol], patch, class_ratios(2, 1.0), 20, 1, seed=0, slice_axis=slice_axis)[0]
    assert tuple(batch["image"].shape) == (20, 1, *patch) and tuple(batch["label"].shape) == (20, 1, *patch)
    assert (batch["label"] == 1).flatten(1).any(1).all()


def test_class_ratios() -> None:
    assert class_ratios(3, 0.5) == pytest.approx([0.5, 0.25, 0.25])
    assert class_ratios(2, 1.0) == pytest.approx([0.0, 1.0])
