"""The one way back to the scan's grid: how a preprocessed volume maps onto the scan it came from.

Reorientation, resampling and cropping compose into one affine map (:class:`NativeMapping`), built from a
preprocessed MetaTensor (:func:`native_mapping`, at inference) or from the JSON record the preprocess stage
writes per case (:func:`geometry_record` -> :func:`mapping_from_record`). :func:`resample_to_native` applies
it tile by tile with a per-tile arg-max, so scan-grid probabilities of all classes never exist at once.
tests/test_geometry.py checks it against MONAI's ``Invertd`` (un-crop, resample, reorient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor


def sub_grid_offset(
    image_affine: np.ndarray, image_shape: Sequence[int], label_affine: np.ndarray, label_shape: Sequence[int]
) -> tuple[int, ...] | None:
    """The image voxel where a smaller label's first voxel lies, when the label is a block of the image's own grid
    (same voxel axes and size, shifted by whole voxels, inside the image); None otherwise (equal shapes included)."""
    image_affine, label_affine = np.asarray(image_affine, float), np.asarray(label_affine, float)
    if tuple(label_shape) == tuple(image_shape) or len(label_shape) != len(image_shape):
        return None
    if not np.allclose(image_affine[:3, :3], label_affine[:3, :3], atol=1e-4):
        return None
    try:
        start = np.linalg.solve(image_affine, label_affine[:, 3])[: len(image_shape)]
    except np.linalg.LinAlgError:  # a degenerate affine: no grid to place anything on
        return None
    whole = np.rint(start)
    if not np.all(np.isfinite(start)) or not np.allclose(start, whole, atol=1e-3) or (whole < 0).any():
        return None
    offset = tuple(int(v) for v in whole)
    inside = all(o + n <= m for o, n, m in zip(offset, label_shape, image_shape, strict=True))
    return offset if inside else None


def place_on_grid(data: np.ndarray, offset: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``data`` (a block of a grid, from voxel ``offset``) on the whole grid of spatial ``shape``, 0 elsewhere."""
    out = np.zeros((*shape, *data.shape[len(shape) :]), dtype=data.dtype)
    out[tuple(slice(o, o + n) for o, n in zip(offset, data.shape, strict=False))] = data
    return out


def geometry_record(image: object) -> dict:
    """What puts a preprocessed volume back on its scan's grid, as JSON (``meta/<id>.json`` -> ``geometry``)."""
    meta = image.meta  # type: ignore[attr-defined]
    original_affine = np.asarray(meta["original_affine"], dtype=np.float64)
    crop = next((op for op in image.applied_operations if "cropped" in op.get("extra_info", {})), None)  # type: ignore[attr-defined]
    shape = [int(s) for s in image.shape[1:]]  # type: ignore[attr-defined]
    if crop is not None:
        cut = [int(c) for c in crop["extra_info"]["cropped"]]
        start, end = cut[0::2], cut[1::2]
        resampled = [int(s) for s in crop["orig_size"]]
    else:
        start, end, resampled = [0, 0, 0], [0, 0, 0], shape
    affine = np.asarray(image.affine, dtype=np.float64)  # type: ignore[attr-defined]
    return {
        "original_shape": [int(s) for s in meta["spatial_shape"]],
        "original_affine": original_affine.tolist(),
        "original_orientation": "".join(nib.aff2axcodes(original_affine)),
        "original_spacing": np.linalg.norm(original_affine[:3, :3], axis=0).tolist(),
        "resampled_shape": resampled,
        "crop_start": start,
        "crop_end": end,
        "shape": shape,
        "affine": affine.tolist(),
        "spacing": np.linalg.norm(affine[:3, :3], axis=0).tolist(),
    }


def quantize(p: torch.Tensor) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 steps of 1/255."""
    return torch.round(p.clamp(0, 1) * 255).to(torch.uint8).numpy()


#: ops of the preprocessing chain that :func:`native_mapping` knows how to undo in one resampling
AFFINE_OPS = {"Orientation", "SpatialResample", "Spacing", "CropForeground"}
TILE = 128  # native-grid tile edge of the streaming inverse (voxels)


@dataclass(frozen=True)
class NativeMapping:
    """How the scan's voxel grid maps into the preprocessed (cropped) grid: one affine plus the crop sides."""

    matrix: np.ndarray  # 4x4: scan voxel index -> preprocessed voxel index (continuous)
    native_shape: tuple[int, int, int]
    cut_low: tuple[bool, bool, bool]  # the crop removed voxels below this preprocessed axis
    cut_high: tuple[bool, bool, bool]  # ... above it


def native_mapping(image: MetaTensor) -> NativeMapping:
    """The scan-grid -> preprocessed-grid mapping of a preprocessed image (reorient, resample, crop).

    Reorientation, resampling and cropping compose into one affine (preprocessed affine^-1 @ scan affine);
    the crop's recorded margins say on which sides the cropped-away voxels lie (background).
    """
    ops = image.applied_operations
    unknown = [op.get("class") for op in ops if op.get("class") not in AFFINE_OPS]
    if unknown:
        raise ValueError(f"the preprocessing chain has steps the native mapping cannot undo: {unknown}")
    native_affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
    shape = tuple(int(s) for s in np.asarray(image.meta["spatial_shape"]).ravel()[:3])
    matrix = np.linalg.solve(np.asarray(image.affine, dtype=np.float64), native_affine)
    low, high = [False] * 3, [False] * 3
    for op in ops:
        if op.get("class") == "CropForeground":
            cropped = [int(c) for c in op["extra_info"]["cropped"]]
            low = [bool(cropped[2 * a]) for a in range(3)]
            high = [bool(cropped[2 * a + 1]) for a in range(3)]
    return NativeMapping(matrix, shape, tuple(low), tuple(high))  # type: ignore[arg-type]


def mapping_from_record(geometry: Mapping) -> NativeMapping:
    """The native mapping of a preprocessed case from its geometry record (:func:`geometry_record`)."""
    matrix = np.linalg.solve(np.asarray(geometry["affine"], float), np.asarray(geometry["original_affine"], float))
    shape = tuple(int(s) for s in geometry["original_shape"][:3])
    low = tuple(bool(c) for c in geometry["crop_start"])
    high = tuple(bool(c) for c in geometry["crop_end"])
    return NativeMapping(matrix, shape, low, high)  # type: ignore[arg-type]


def resample_to_native(
    probs: torch.Tensor, mapping: NativeMapping, keep_probabilities: bool = False, tile: int = TILE
) -> tuple[np.ndarray, np.ndarray | None]:
    """Arg-max labels (and uint8 probabilities) on the scan's grid from preprocessed-grid probabilities.

    Streams over cubic tiles of the scan grid: each tile's voxel centres are mapped into the preprocessed
    grid, the block of ``probs`` they fall in is taken in float32 and sampled trilinearly (border values
    up to the grid's edge, as MONAI's inverse resampling does); voxels that fall in a cropped-away region
    (more than half a voxel beyond a cropped side) are background. Memory: the labels, one tile and its
    block; ``probs`` may stay float16.
    """
    k = probs.shape[0]
    n = np.asarray(probs.shape[1:])
    lin, off = mapping.matrix[:3, :3], mapping.matrix[:3, 3]
    labels = np.zeros(mapping.native_shape, dtype=np.uint8)
    out = None
    if keep_probabilities:
        out = np.zeros((*mapping.native_shape, k), dtype=np.uint8)
        out[..., 0] = 255
    starts = [range(0, s, tile) for s in mapping.native_shape]
    for x0, y0, z0 in product(*starts):
        sl = tuple(slice(a, min(a + tile, s)) for a, s in zip((x0, y0, z0), mapping.native_shape, strict=True))
        # preprocessed-grid coordinates of the tile's voxel centres (affine, so the block is spanned by the corners)
        corners = np.array(list(product(*[(s.start, s.stop - 1) for s in sl])), dtype=np.float64)
        ends = corners @ mapping.matrix[:3, :3].T + off
        lo = np.clip(np.floor(ends.min(0)).astype(int), 0, n - 1)
        hi = np.clip(np.ceil(ends.max(0)).astype(int), 0, n - 1)
        size = hi - lo + 1
        scale = np.where(size > 1, 2.0 / np.maximum(size - 1, 1), 0.0)
        idx = [torch.arange(s.start, s.stop, dtype=torch.float32) for s in sl]
        outside = torch.zeros([s.stop - s.start for s in sl], dtype=torch.bool)
        grid_axes = []
        for a in range(3):  # block-relative coordinate along preprocessed axis a, float32 (ample below 10^5 voxels)
            ua = (
                (idx[0] * float(lin[a, 0]))[:, None, None]
                + (idx[1] * float(lin[a, 1]))[None, :, None]
                + (idx[2] * float(lin[a, 2]) + float(off[a] - lo[a]))[None, None, :]
            )
            if mapping.cut_low[a]:
                outside |= ua < -0.5 - lo[a]
            if mapping.cut_high[a]:
                outside |= ua > n[a] - 0.5 - lo[a]
            grid_axes.append(ua.mul_(float(scale[a])).sub_(1.0 if size[a] > 1 else 0.0))
        if bool(outside.all()):
            continue
        grid = torch.stack(grid_axes[::-1], dim=-1)[None]  # grid_sample wants (W, H, D) = (z, y, x) order
        block = probs[:, lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1].float()[None]
        sampled = F.grid_sample(block, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
        best, tile_labels = sampled[0].clone(), torch.zeros(outside.shape, dtype=torch.uint8)
        for c in range(1, k):  # running arg-max (first maximum wins, like torch.argmax)
            tile_labels = torch.where(sampled[c] > best, c, tile_labels).to(torch.uint8)
            torch.maximum(best, sampled[c], out=best)
        tile_labels.masked_fill_(outside, 0)
        labels[sl] = tile_labels.numpy()
        if out is not None:
            sampled[0][outside] = 1.0
            sampled[1:, outside] = 0.0
            out[sl] = quantize(sampled.permute(1, 2, 3, 0))
    return labels, out
