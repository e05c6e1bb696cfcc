"""MONAI's view of THE reader: :class:`PipelineReader` for ``LoadImaged`` and :func:`load_image` for code
that has already read (and checked) a scan. Both give the meta MONAI's own readers give (RAS ``affine``,
``original_affine``, ``spatial_shape``, ``original_channel_dim``), so ``EnsureChannelFirstd``,
``Orientationd``, ``Spacingd`` and ``Invertd`` work unchanged; nothing else of a file's header is passed on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.utils import ImageMetaKey

from pipeline.core.labels import read_label
from pipeline.core.readers import backend_for, read_array
from pipeline.core.readers.base import Header

Read = tuple[np.ndarray, Header]


def _names(filename: Sequence[str | Path] | str | Path) -> tuple:
    return tuple(filename) if isinstance(filename, (list, tuple)) else (filename,)


def meta_of(data: np.ndarray, header: Header) -> dict:
    """MONAI meta of one file read by :func:`~pipeline.core.readers.read_array`."""
    spatial = tuple(header.shape[: len(header.spacing)])
    return {
        "affine": np.array(header.affine, dtype=np.float64),
        "original_affine": np.array(header.affine, dtype=np.float64),
        "spatial_shape": np.asarray(spatial),
        "spacing": np.asarray(header.spacing, dtype=np.float64),
        "space": "RAS",
        "original_channel_dim": float("nan") if data.ndim == len(spatial) else -1,
    }


def stack(reads: Sequence[Read]) -> tuple[np.ndarray, dict]:
    """One array and meta from one file or one file per channel (as MONAI stacks several files)."""
    arrays = [data for data, _ in reads]
    meta = meta_of(*reads[0])
    for data, header in reads[1:]:
        if tuple(data.shape[: len(meta["spatial_shape"])]) != tuple(meta["spatial_shape"]) or not np.allclose(
            header.affine, meta["affine"], atol=1e-3
        ):
            raise ValueError("channel files differ in affine or spatial shape")
    if len(arrays) == 1:
        return arrays[0], meta
    if not np.isnan(meta["original_channel_dim"]):  # 4D files: join along their channel axis
        return np.concatenate(arrays, axis=-1), meta
    meta["original_channel_dim"] = 0
    return np.stack(arrays, axis=0), meta


def load_image(reads: Sequence[Read], filename: str | Path, dtype: type = np.float32) -> MetaTensor:
    """What ``LoadImaged(reader=PipelineReader, image_only=True, dtype=dtype)`` gives for these reads."""
    data, meta = stack(reads)
    meta[ImageMetaKey.FILENAME_OR_OBJ] = str(filename)
    array = torch.as_tensor(np.asarray(data, dtype=dtype))
    return MetaTensor.ensure_torch_and_prune_meta(array, meta)


class PipelineReader(ImageReader):
    """MONAI ``ImageReader`` for every format of :mod:`pipeline.core.readers` (one read path for all).

    ``label_values`` (the dataset's stored label values) makes it a reader of label files, as
    :func:`pipeline.core.labels.read_label` reads them (a palette mask's classes; a lossy mask's label values).
    """

    def __init__(self, label_values: Sequence[float] | None = None) -> None:
        super().__init__()
        self.label_values = None if label_values is None else [float(v) for v in label_values]

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return all(backend_for(f) is not None for f in _names(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: object) -> Read | list[Read]:
        if self.label_values is not None:
            reads = [read_label(name, self.label_values) for name in _names(data)]
        else:
            reads = [read_array(name) for name in _names(data)]
        return reads if len(reads) > 1 else reads[0]

    def get_data(self, img: Read | list[Read]) -> tuple[np.ndarray, dict]:
        return stack(img if isinstance(img, list) else [img])
