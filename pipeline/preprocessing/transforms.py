"""MONAI dictionary-transform chains on ``{"image", "label"}``.

``preprocessing`` is the one deterministic chain: the preprocess stage runs it to write the training
volumes, and inference runs the very same chain on a new scan (and inverts it to put the prediction
back on the scan's own voxel grid). Training patches are drawn from the preprocessed volumes a batch at
a time (:mod:`pipeline.sampling.patches`) and augmented a batch at a time (:mod:`pipeline.sampling.augment`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from pipeline.core.geometry import place_on_grid, sub_grid_offset
from pipeline.core.image2d import match_channels
from pipeline.core.labels import is_identity, is_slicer_segmentation, stored_values
from pipeline.preprocessing.pictures import picture_factor


def load_images(keys: Sequence[str], label_values: Sequence[float] | None = None) -> mt.LoadImaged:
    """MONAI's ``LoadImaged`` with the pipeline's one reader (:class:`pipeline.core.readers.PipelineReader`);
    with ``label_values`` (the stored label values; empty: unknown) the keys are label files (a JPEG mask is
    brought back to those values, see :func:`pipeline.core.labels.read_label`).

    ``LoadImaged`` also builds every MONAI default reader; with pydicom installed, MONAI 1.6's GPU DICOM
    reader (``NvImgCodecPydicomReader``) then logs a warning and warns that nvImageCodec (a CUDA library) is
    absent, about a reader this pipeline never uses. Exactly those two messages are silenced, while it is built.
    """
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec", category=UserWarning)
            kwargs = {} if label_values is None else {"label_values": list(label_values)}  # PipelineReader's
            return mt.LoadImaged(
                keys, reader="pipeline.core.readers.PipelineReader", image_only=True, dtype=np.float32, **kwargs
            )
    finally:
        plugin_log.setLevel(level)


BODY_KEY = "body"  # the body mask's entry between the crop and the normalisation (z-scores inside the body)


def body_mask(x: torch.Tensor) -> torch.Tensor:
    """Voxels that belong to the scanned body: anything above the image minimum (any channel)."""
    flat = x.reshape(x.shape[0], -1)
    low = flat.min(dim=1).values.reshape((-1,) + (1,) * (x.ndim - 1))
    return (x > low).any(dim=0, keepdim=True)


def _body_uint8(x: torch.Tensor) -> torch.Tensor:
    """:func:`body_mask` as 0/1 values (a module-level function: the chain pickles for worker processes)."""
    return body_mask(x).to(torch.uint8)


class MatchChannelsd(mt.MapTransform):
    """Give a channel-first image the dataset's number of channels (2D grey <-> RGB, see
    :func:`pipeline.core.image2d.match_channels`); a no-op when they already agree. Not spatial."""

    def __init__(self, keys: Hashable | Sequence[Hashable], channels: int) -> None:
        super().__init__(keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if int(x.shape[0]) != self.channels:
                out = torch.as_tensor(match_channels(np.asarray(x), self.channels), dtype=torch.float32)
                d[key] = MetaTensor(out, meta=x.meta, applied_operations=x.applied_operations)
        return d


class LabelOnScanGridd(mt.MapTransform):
    """A channel-first label that holds a block of its scan's grid, read from a 3D Slicer segmentation cropped to its
    segments, on the scan's whole grid (background elsewhere), as :func:`pipeline.core.labels.read_label` places it
    given the scan; any other label, or one already on the scan's grid, passes unchanged. Not invertible: only
    labels, which are never inverted."""

    def __init__(self, label: str = "label", image: str = "image") -> None:
        super().__init__([label])
        self.label, self.image = label, image

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label, image = d[self.label], d[self.image]
        if not is_slicer_segmentation(label.meta.get("filename_or_obj", "")):
            return d
        shape = tuple(int(s) for s in image.shape[1:])
        offset = sub_grid_offset(image.affine.numpy(), shape, label.affine.numpy(), tuple(label.shape[1:]))
        if offset is None:
            return d
        placed = np.moveaxis(place_on_grid(np.moveaxis(label.numpy(), 0, -1), offset, shape), -1, 0)
        meta = {**label.meta, "affine": image.affine.clone(), "spatial_shape": image.meta["spatial_shape"]}
        meta["original_affine"] = image.meta["original_affine"]
        d[self.label] = MetaTensor(torch.as_tensor(placed), meta=meta)
        return d


class ScalePictured(mt.MapTransform):
    """Give a 2D picture the pixel size that brings it to ``reference``'s size
    (:func:`pipeline.preprocessing.pictures.picture_factor`): its affine (and the recorded original affine, so
    the native mapping maps the picture's own pixels) times that factor in-plane. No resampling happens here."""

    def __init__(self, keys: Hashable | Sequence[Hashable], reference: Sequence[int]) -> None:
        super().__init__(keys)
        self.reference = [int(v) for v in reference]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            factor = picture_factor(x.shape[1:4], self.reference)
            scale = np.diag([factor if r > 1 else 1.0 for r in self.reference] + [1.0])
            x.affine = torch.as_tensor(np.asarray(x.affine, dtype=np.float64) @ scale)
            x.meta["original_affine"] = np.asarray(x.meta["original_affine"], dtype=np.float64) @ scale
        return d


def preprocessing(
    target_spacing: Sequence[float],
    with_label: bool = True,
    normalization: str = "zscore",
    crop_foreground: bool = True,
    *,
    intensity: Sequence[dict] | None = None,
    slow_axis: int | None = None,
    image_interp: str = "linear",
    slow_axis_interp: str = "linear",
    label_interp: str = "nearest",
    num_classes: int | None = None,
    channels: int | None = None,
    label_values: Sequence[float] = (),
    picture_reference: Sequence[int] | None = None,
) -> mt.Compose:
    """Load -> channel first -> RAS -> resample -> crop to body -> normalise.

    ``channels`` (the dataset's input channels) converts a grey 2D image of a colour dataset to RGB and
    back; ``label_values`` (the stored value of each class, see :mod:`pipeline.core.labels`) maps the
    label file's values to classes 0..K-1 right after loading; ``picture_reference`` brings a 2D picture to that
    shape's size (:class:`ScalePictured`).

    Resampling keeps the physical extent of the scan (``scale_extent``: the output grid starts at the
    scan's first corner and covers it to within one output voxel). Image ``image_interp`` (``linear`` or
    ``spline``: cubic), label ``nearest`` or ``linear`` (one-hot, linear, arg-max; needs ``num_classes``).
    With ``slow_axis`` (anisotropic data) the other two RAS axes are resampled first and the slow axis in a
    second step, images with ``slow_axis_interp``. Every spatial step is a MONAI invertible transform.

    Normalisation: ``intensity`` (one entry per channel, see :class:`pipeline.preprocessing.plan.NormalizeChannelsd`:
    ``ct`` clip + z-score with dataset statistics, ``zscore`` per image, ``none``) when given, else
    ``normalization`` for all channels (``zscore`` per image or ``none``; ``ct`` needs ``intensity``).
    Inference builds the same chain with ``preprocessing(with_label=False, **plan.transform_kwargs())``.
    """
    _check_options(image_interp, slow_axis_interp, label_interp, with_label, num_classes, intensity, normalization)
    keys = ["image", "label"] if with_label else ["image"]
    onehot = with_label and label_interp == "linear"
    chain: list = [load_images(["image"])]
    if with_label:  # a lossy (JPEG) mask is read as the nearest stored label value (core/labels.py)
        chain.append(load_images(["label"], list(stored_values(num_classes or 0, label_values))))
    chain.append(mt.EnsureChannelFirstd(keys))
    if with_label:
        chain.append(LabelOnScanGridd())
    if channels:
        chain.append(MatchChannelsd("image", channels))
    if with_label and not is_identity(label_values):
        chain.append(mt.MapLabelValued("label", list(label_values), list(range(len(label_values))), dtype=np.float32))
    if picture_reference:
        chain.append(ScalePictured(keys, picture_reference))
    chain.append(mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if onehot:
        chain.append(mt.AsDiscreted("label", to_onehot=num_classes))
    chain += _resampling(keys, target_spacing, slow_axis, image_interp, slow_axis_interp, onehot)
    if onehot:
        chain.append(mt.AsDiscreted("label", argmax=True))
    inside_body = intensity is not None and any(c.get("body") for c in intensity)
    if inside_body:  # the body as the crop sees it, cropped along with the image (see NormalizeChannelsd)
        chain.append(mt.Lambdad("image", _body_uint8, overwrite=BODY_KEY))
    if crop_foreground:
        cropped = [*keys, BODY_KEY] if inside_body else keys
        chain.append(mt.CropForegroundd(cropped, source_key="image", select_fn=body_mask, allow_smaller=True))
    chain += _normalization(intensity, normalization)
    return mt.Compose(chain)


#: image interpolation setting -> MONAI ``Spacingd`` mode
INTERP_MODES: dict[str, str | int] = {"linear": "bilinear", "nearest": "nearest", "spline": 3}


def _check_options(
    image_interp: str,
    slow_axis_interp: str,
    label_interp: str,
    with_label: bool,
    num_classes: int | None,
    intensity: Sequence[dict] | None,
    normalization: str,
) -> None:
    """``ValueError`` for an interpolation or normalisation :func:`preprocessing` cannot build."""
    for name, value in (("image_interp", image_interp), ("slow_axis_interp", slow_axis_interp)):
        if value not in INTERP_MODES:
            raise ValueError(f"{name} must be one of {list(INTERP_MODES)}, got {value!r}")
    if label_interp not in ("nearest", "linear"):
        raise ValueError(f"label_interp must be 'nearest' or 'linear', got {label_interp!r}")
    if with_label and label_interp == "linear" and not num_classes:
        raise ValueError("label_interp='linear' (one-hot) needs num_classes")
    if intensity is None and normalization not in ("zscore", "none"):
        raise ValueError(f"normalization {normalization!r} needs per-channel statistics (intensity=...)")


def _resampling(
    keys: list[str],
    target_spacing: Sequence[float],
    slow_axis: int | None,
    image_interp: str,
    slow_axis_interp: str,
    onehot: bool,
) -> list[mt.Spacingd]:
    """One ``Spacingd`` to ``target_spacing``; with a ``slow_axis``, the other axes first, then the slow axis."""
    label_mode = "bilinear" if onehot else "nearest"
    spacing = [float(s) for s in target_spacing]
    grid = {"scale_extent": True, "align_corners": True}  # MONAI pairs scale_extent with align_corners
    if slow_axis is None:
        steps = [(spacing, image_interp)]
    else:
        in_plane = [-1.0 if a == slow_axis else s for a, s in enumerate(spacing)]  # <= 0: keep the scan's spacing
        along = [s if a == slow_axis else -1.0 for a, s in enumerate(spacing)]
        steps = [(in_plane, image_interp), (along, slow_axis_interp)]
    return [
        mt.Spacingd(keys, pixdim=pixdim, mode=[INTERP_MODES[mode], label_mode][: len(keys)], dtype=np.float32, **grid)
        for pixdim, mode in steps
    ]


def _normalization(intensity: Sequence[dict] | None, normalization: str) -> list[mt.MapTransform]:
    """Per-channel normalisation from the plan's ``intensity``, else per-image z-score (or nothing)."""
    from pipeline.preprocessing.plan import NormalizeChannelsd

    if intensity is not None:
        return [NormalizeChannelsd("image", intensity, BODY_KEY if any(c.get("body") for c in intensity) else None)]
    if normalization == "zscore":
        return [mt.NormalizeIntensityd("image", channel_wise=True)]
    return []
