"""2D images as they come (PNG, JPEG, TIFF, BMP, GIF): read as one-slice volumes, masks written back as PNG.

A 2D image is one case. It is returned with the same ``(array, Header)`` contract as the volume formats of
:mod:`pipeline.core.readers`, as a volume of one slice so that every later stage handles it unchanged:

* array ``(x, y, 1)`` for a grey image, ``(x, y, 1, c)`` for a colour one: ``x`` is the column (left to
  right), ``y`` the row (top to bottom), the third axis has one slice, colour channels come last;
* grey (``L``, ``I;16``, ``I``, ``F``) stays one channel with its stored type (16-bit stays 16-bit);
  bilevel (``1``) becomes ``uint8`` 0/1; ``LA`` and ``RGBA`` lose their alpha (transparency is not an
  intensity); palette (``P``: GIF masks) and ``CMYK``/``YCbCr``/... images become RGB; an RGB image whose
  three channels are equal (a grey picture or mask stored as colour) is one grey channel; a label mask
  (``mask=True``, see :func:`pipeline.core.labels.read_label`) with a colour palette (PASCAL VOC's class
  colours) is read as its palette indices, the classes;
* there is no physical spacing: the header says spacing 1 with an identity affine, and
  ``Header.physical_spacing`` is False so the plan and the report can say "no physical spacing" (distances
  are in pixels).

TIFF goes through ``tifffile`` (any bit depth, 16-bit RGB included; the first page of a multi-page file),
everything else through Pillow. :func:`match_channels` turns grey into colour and back when the cases of a
dataset differ (one chest X-ray stored as RGB, the next as grey). :func:`write_mask_2d` writes a label map
of the image's own size as PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.readers import IMAGE2D_SUFFIXES, Header, ReadError

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
#: ITU-R BT.601 luma weights (what Pillow's ``convert("L")`` uses)
LUMA = (0.299, 0.587, 0.114)
MAX_PIXELS = 40_000 * 40_000  # refuse a header claiming more pixels than this before decoding


def is_image2d(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(IMAGE2D_SUFFIXES)


def _header(shape: tuple[int, ...], dtype: np.dtype) -> Header:
    return Header(shape, (1.0, 1.0, 1.0), np.eye(4), str(np.dtype(dtype)), physical_spacing=False)


def _as_volume(pixels: np.ndarray) -> np.ndarray:
    """(rows, cols[, c]) -> (x, y, 1[, c])."""
    out = np.swapaxes(pixels, 0, 1)[:, :, None]
    return np.ascontiguousarray(out)


def _palette_classes(img: Any) -> np.ndarray | None:
    """A palette picture's indices when its colours code classes (a label mask as PASCAL VOC stores them: a
    used colour is not grey), else None (a grey palette, as DRIVE's GIF masks: read as its grey levels)."""
    if img.mode != "P":
        return None
    index = np.asarray(img)
    palette = np.asarray(img.getpalette() or [], dtype=np.uint8)
    palette = palette[: palette.size // 3 * 3].reshape(-1, 3)
    used = np.unique(index)
    if not len(palette) or int(used.max()) >= len(palette):
        return None
    colours = palette[used]
    return None if np.all(colours == colours[:, :1]) else index


def _from_pillow(path: Path, mask: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as img:
            img.seek(0)
            mode = img.mode
            if mask and (classes := _palette_classes(img)) is not None:
                return classes
            if mode == "1":
                return np.asarray(img, dtype=np.uint8)
            elif mode in ("LA", "La"):
                img = img.getchannel(0)
            elif mode in ("RGBA", "RGBa", "RGBX"):
                img = img.convert("RGB")
            elif mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            pixels = np.asarray(img)
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ReadError(f"not a readable image: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data
        raise ReadError(f"cannot decode the image (truncated or corrupt): {err}") from None
    if pixels.dtype.byteorder == ">":  # I;16B and friends
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels


def _from_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if int(np.prod(page.shape)) > MAX_PIXELS * 4:
                raise ReadError(f"image too large ({'x'.join(map(str, page.shape))})")
            pixels = page.asarray()
            photometric = int(page.photometric)
    except ReadError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for bad files
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise ReadError(f"cannot decode the TIFF image (truncated or corrupt): {text}") from None
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[-1] not in (3, 4):  # planar (c, rows, cols)
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):  # grey + alpha, RGB + alpha
        pixels = pixels[..., :1] if pixels.shape[-1] == 2 else pixels[..., :3]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim != 2 and not (pixels.ndim == 3 and pixels.shape[-1] == 3):
        raise ReadError(f"unsupported TIFF layout {pixels.shape} (expected one grey or RGB image)")
    if photometric == 0 and pixels.dtype.kind in "ui":  # MINISWHITE: 0 is white
        pixels = np.iinfo(pixels.dtype).max - pixels
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    return pixels


def _pixels(path: Path, mask: bool = False) -> np.ndarray:
    if not path.is_file():
        raise ReadError("file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ReadError("empty file (0 bytes)")
    if path.name.lower().endswith(TIFF_SUFFIXES):
        pixels = _from_tiff(path)
    else:
        pixels = _from_pillow(path, mask)
    if pixels.ndim == 3 and _equal_channels(pixels):
        pixels = pixels[..., 0]
    return pixels


def _equal_channels(pixels: np.ndarray) -> bool:
    return pixels.ndim == 3 and all(np.array_equal(pixels[..., 0], pixels[..., c]) for c in range(1, pixels.shape[-1]))


def read_array_2d(path: str | Path, mask: bool = False) -> tuple[np.ndarray, Header]:
    """A 2D image as ``(x, y, 1[, c])`` and its header (spacing 1, identity affine, no physical spacing).

    ``mask``: a label mask, whose palette, when its colours code classes (not grey), gives the class indices.
    """
    data = _as_volume(_pixels(Path(path), mask))
    return data, _header(data.shape, data.dtype)


def read_header_2d(path: str | Path) -> Header:
    """Header of a 2D image (decodes it, which also checks that it is intact)."""
    return read_array_2d(path)[1]


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """A channel-first image with ``channels`` channels: grey repeated into colour, colour to grey by luma.

    Only grey <-> colour (1 <-> 3) is converted; any other difference is a ``ValueError``.
    """
    have = int(image.shape[0])
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(np.asarray(image), 3, axis=0)
    if have == 3 and channels == 1:
        weights = np.asarray(LUMA, dtype=np.float64).reshape((3,) + (1,) * (image.ndim - 1))
        return (np.asarray(image, dtype=np.float64) * weights).sum(axis=0, keepdims=True).astype(np.float32)
    raise ValueError(f"the image has {have} channel(s), the dataset {channels}; only grey <-> RGB is converted")


def write_mask_2d(labels: np.ndarray, path: str | Path) -> Path:
    """Write an ``(x, y[, 1])`` label map as a PNG of the image's own size (8-bit, 16-bit above 255)."""
    from PIL import Image

    from pipeline.core.io import write_atomic

    labels = np.asarray(labels)
    if labels.ndim == 3:
        if labels.shape[2] != 1:
            raise ValueError(f"{path}: a 2D mask needs one slice, got shape {labels.shape}")
        labels = labels[:, :, 0]
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"{path}: label values outside 0..65535 cannot be written as PNG")
    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    pixels = np.ascontiguousarray(labels.T.astype(dtype))
    return write_atomic(path, lambda p: Image.fromarray(pixels).save(p, format="PNG"))
