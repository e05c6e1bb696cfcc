"""The one way back to the scan's grid: the tiled native mapping against MONAI's Invertd, and the JSON record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from test_predictor import LESIONS, _folder, scan, threshold_predictor  # noqa: F401 - scan is a fixture

from pipeline.core.geometry import (
    geometry_record,
    mapping_from_record,
    native_mapping,
    place_on_grid,
    quantize,
    resample_to_native,
    sub_grid_offset,
)
from pipeline.inference.predictor import Predictor


def preprocessed_probabilities(predictor: Predictor, path: Path) -> tuple[MetaTensor, torch.Tensor]:
    """The preprocessed scan and the predictor's blended probabilities on its grid."""
    image = predictor.chain({"image": str(path)})["image"]
    with torch.no_grad():
        probs = predictor.inferer(image.as_tensor()[None].float(), predictor.window)[0]
    return image, probs


def invertd_native(chain, image: MetaTensor, probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The reference: each class inverted with MONAI's ``Invertd`` on its own, then a running arg-max.

    The background is inverted as ``1 - p0`` so that voxels outside the cropped field of view (padded with
    zeros by the inverse crop) come back as background with probability 1.
    """
    invert = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)
    stub = MetaTensor(torch.zeros(1), meta=image.meta, applied_operations=image.applied_operations)

    def to_native(channel: torch.Tensor) -> torch.Tensor:
        return invert({"image": stub, "pred": MetaTensor(channel[None].float())})["pred"][0].as_tensor()

    best = 1.0 - to_native(1.0 - probs[0].float())
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    out = np.empty((*best.shape, probs.shape[0]), dtype=np.uint8)
    out[..., 0] = quantize(best)
    for k in range(1, probs.shape[0]):
        pk = to_native(probs[k])
        labels[pk > best] = k
        torch.maximum(best, pk, out=best)
        out[..., k] = quantize(pk)
    return labels.numpy(), out


@pytest.mark.parametrize("dims", [2, 3])
def test_native_mapping_matches_monai_invertd(scan, dims: int) -> None:  # noqa: F811 - pytest fixture
    """The tiled one-step inverse gives what MONAI's Invertd (un-crop, resample, reorient) gives."""
    path, _ = scan
    predictor = threshold_predictor(path, dims)
    image, probs = preprocessed_probabilities(predictor, path)
    labels, native = resample_to_native(probs, native_mapping(image), keep_probabilities=True)
    ref_labels, ref_native = invertd_native(predictor.chain, image, probs)
    assert 0 < labels.sum() and labels.shape == ref_labels.shape
    assert (labels != ref_labels).sum() <= 2
    assert np.abs(native.astype(int) - ref_native).max() <= 1


@pytest.mark.skipif(not LESIONS.is_dir(), reason="shared lesion data not available")
def test_native_mapping_matches_invertd_on_a_real_scan(tmp_path: Path) -> None:
    """A random network gives many label boundaries everywhere, including the scan's edges and crop sides."""
    path = LESIONS / "breast1_image.nii.gz"
    predictor = Predictor(_folder(tmp_path), "cpu")
    image, probs = preprocessed_probabilities(predictor, path)
    labels, native = resample_to_native(probs, native_mapping(image), keep_probabilities=True)
    ref_labels, ref_native = invertd_native(predictor.chain, image, probs)
    assert 0 < labels.sum() < labels.size
    assert (labels != ref_labels).mean() < 1e-4
    assert np.abs(native.astype(int) - ref_native).max() <= 1


def test_a_chain_the_mapping_cannot_undo_is_refused() -> None:
    image = MetaTensor(torch.zeros(1, 4, 4, 4))
    image.applied_operations = [{"class": "RandRotate"}]
    with pytest.raises(ValueError, match="cannot undo.*RandRotate"):
        native_mapping(image)


def test_record_mapping_equals_the_meta_tensor_mapping(scan) -> None:  # noqa: F811 - pytest fixture
    path, _ = scan
    image = threshold_predictor(path, 3).chain({"image": str(path)})["image"]
    a, b = native_mapping(image), mapping_from_record(geometry_record(image))
    assert np.allclose(a.matrix, b.matrix) and a.native_shape == b.native_shape
    assert a.cut_low == b.cut_low and a.cut_high == b.cut_high and any(a.cut_low + a.cut_high)


def test_a_block_of_the_scan_grid_is_found_and_placed_and_nothing_else_is() -> None:
    """``sub_grid_offset``: a label on the scan's voxel grid, shifted by whole voxels and inside it (a cropped Slicer
    segmentation), gives its first voxel; half a voxel off, another spacing, outside the scan, equal shapes or a
    degenerate affine give None. ``place_on_grid`` puts the block there with background around it."""
    grid = np.diag([0.8, 0.8, 2.0, 1.0])
    grid[:3, 3] = [-10.0, 5.0, 3.0]
    block = grid.copy()
    block[:3, 3] += grid[:3, :3] @ [5, 6, 3]
    assert sub_grid_offset(grid, (20, 24, 10), block, (6, 8, 4)) == (5, 6, 3)
    half = block.copy()
    half[0, 3] += 0.4
    other = block.copy()
    other[0, 0] = 1.0
    assert sub_grid_offset(grid, (20, 24, 10), half, (6, 8, 4)) is None
    assert sub_grid_offset(grid, (20, 24, 10), other, (6, 8, 4)) is None
    assert sub_grid_offset(grid, (20, 24, 10), block, (16, 8, 4)) is None  # would reach past the scan
    assert sub_grid_offset(grid, (20, 24, 10), grid, (20, 24, 10)) is None
    assert sub_grid_offset(np.zeros((4, 4)), (20, 24, 10), block, (6, 8, 4)) is None
    data = np.arange(6 * 8 * 4).reshape(6, 8, 4)
    placed = place_on_grid(data, (5, 6, 3), (20, 24, 10))
    assert placed.shape == (20, 24, 10) and placed.dtype == data.dtype
    np.testing.assert_array_equal(placed[5:11, 6:14, 3:7], data)
    assert placed.sum() == data.sum()
