"""MONAI dictionary-transform chains on ``{"image", "label"}``.

``preprocessing`` is the one deterministic chain: the preprocess stage runs it to write the training
volumes, and inference runs the very same chain on a new scan (and inverts it to put the prediction
back on the scan's own voxel grid). ``training_sampler`` and ``augmentation`` are the random parts,
used for training only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai import transforms as mt


def body_mask(x: torch.Tensor) -> torch.Tensor:
    """Voxels that belong to the scanned body: anything above the image minimum (any channel)."""
    flat = x.reshape(x.shape[0], -1)
    low = flat.min(dim=1).values.reshape((-1,) + (1,) * (x.ndim - 1))
    return (x > low).any(dim=0, keepdim=True)


def preprocessing(
    target_spacing: Sequence[float],
    with_label: bool = True,
    normalization: str = "zscore",
    crop_foreground: bool = True,
) -> mt.Compose:
    """Load -> channel first -> RAS -> resample (image linear, label nearest) -> crop to body -> normalise."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    chain: list = [
        mt.LoadImaged(keys, image_only=True, dtype=np.float32),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes="RAS"),
        mt.Spacingd(keys, pixdim=tuple(target_spacing), mode=modes, dtype=np.float32),
    ]
    if crop_foreground:
        chain.append(mt.CropForegroundd(keys, source_key="image", select_fn=body_mask, allow_smaller=True))
    if normalization == "zscore":
        chain.append(mt.NormalizeIntensityd("image", channel_wise=True))
    return mt.Compose(chain)


def class_ratios(num_classes: int, foreground_ratio: float) -> list[float]:
    """Crop-centre ratios: background gets ``1 - foreground_ratio``, the rest is split evenly."""
    fg = foreground_ratio / (num_classes - 1)
    return [1.0 - foreground_ratio] + [fg] * (num_classes - 1)


def training_sampler(
    patch_size: Sequence[int], num_classes: int, foreground_ratio: float, slice_axis: int | None = None
) -> list:
    """Random patch (3D) or slice patch (2D, ``slice_axis`` given) centred by class ratios.

    Expects ``image`` (C, X, Y, Z), ``label`` (1, X, Y, Z) and ``locations`` (per-class flat
    indices from the sample stage).
    """
    if slice_axis is None:
        size = list(patch_size)
    else:
        size = list(patch_size)
        size.insert(slice_axis, 1)
    chain: list = [
        mt.SpatialPadd(["image", "label"], spatial_size=size),
        mt.RandCropByLabelClassesd(
            ["image", "label"],
            label_key="label",
            spatial_size=size,
            ratios=class_ratios(num_classes, foreground_ratio),
            num_classes=num_classes,
            indices_key="locations",
            warn=False,
        ),
    ]
    if slice_axis is not None:
        chain.append(mt.SqueezeDimd(["image", "label"], dim=slice_axis + 1))
    return chain


def augmentation(spatial_dims: int, anisotropic: bool = False) -> list:
    """Training-only augmentation: flips, small rotation/scaling, intensity scale/shift, noise, gamma."""
    keys = ["image", "label"]
    rotate = (0.26,) if spatial_dims == 2 else ((0.0, 0.0, 0.26) if anisotropic else (0.26, 0.26, 0.26))
    return [
        mt.RandAffined(
            keys,
            prob=0.25,
            rotate_range=rotate,
            scale_range=(0.15,) * spatial_dims,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        *[mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(spatial_dims)],
        mt.RandScaleIntensityd("image", factors=0.15, prob=0.15),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=0.15),
        mt.RandGaussianNoised("image", std=0.1, prob=0.1),
        mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.15),
    ]
