"""What every reader backend shares: the :class:`Header` contract, :class:`ReadError`, size limits, and
bounded helpers (streaming gzip, paths a header may name)."""

from __future__ import annotations

import argparse
import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.config import DataConfig

#: default largest number of voxels (all channels) one file may declare (``data.max_voxels``)
DEFAULT_MAX_VOXELS = DataConfig.max_voxels
#: the most a deflate stream can expand (zlib's documented limit is 1032:1); a file claiming more is truncated
MAX_DEFLATE_RATIO = 1032
CHUNK = 1 << 20  # bytes per streaming read

_limits = {"max_voxels": DEFAULT_MAX_VOXELS}


class ReadError(Exception):
    """A file that cannot be read; the message is one line and does not repeat the path."""


@dataclass(frozen=True)
class Header:
    """Geometry of an image as the file declares it."""

    shape: tuple[int, ...]  # array shape, spatial axes first: (x, y, z[, c])
    spacing: tuple[float, ...]  # voxel size per spatial axis as stored in the header (mm)
    affine: np.ndarray  # 4x4 voxel index -> RAS world (mm)
    dtype: str
    physical_spacing: bool = True  # False for 2D pictures (PNG, JPEG, ...): spacing 1, distances in pixels
    # the format's own header object for writers that keep it (NIfTI: the nibabel header); None otherwise
    native: Any = field(default=None, compare=False, repr=False)

    @property
    def ndim(self) -> int:
        return len(self.shape)


def max_voxels() -> int:
    """The current voxel limit per file (see :func:`set_max_voxels`)."""
    return _limits["max_voxels"]


def set_max_voxels(n: int | None) -> None:
    """Set the largest voxel count (all channels) a file may declare; None restores the default."""
    if n is not None and int(n) < 1:
        raise ValueError(f"max_voxels must be positive, got {n}")
    _limits["max_voxels"] = DEFAULT_MAX_VOXELS if n is None else int(n)


def add_max_voxels_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--max-voxels`` option of the user tools (pass its value to :func:`set_max_voxels`)."""
    parser.add_argument(
        "--max-voxels",
        type=int,
        default=DEFAULT_MAX_VOXELS,
        help="largest voxel count a scan file may declare; larger files are refused unread "
        "(default: %(default)s, config data.max_voxels)",
    )


def check_declared(shape: Sequence[int], itemsize: int, limit: int | None = None) -> int:
    """Bytes of voxel data a header declares; :class:`ReadError` when a size is not positive or over the limit."""
    dims = [int(s) for s in shape]
    if not dims or min(dims) < 1:
        raise ReadError(f"header declares an empty or negative size {'x'.join(map(str, dims))}")
    voxels = int(np.prod(dims, dtype=object))
    limit = max_voxels() if limit is None else limit
    if voxels > limit:
        raise ReadError(
            f"header declares {'x'.join(map(str, dims))} = {voxels} voxels, over the limit of {limit} "
            "(data.max_voxels / --max-voxels)"
        )
    return voxels * int(itemsize)


def check_compressed_size(packed: int, need: int) -> None:
    """A deflate stream of ``packed`` bytes cannot hold ``need`` bytes when the ratio is impossible."""
    if need > packed * MAX_DEFLATE_RATIO + 4096:
        raise ReadError(
            f"truncated: header promises {need} bytes of voxel data but {packed} compressed bytes cannot hold them"
        )


def read_into(fh: BinaryIO, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``fh`` (streaming); returns how many bytes were read (less at end of file)."""
    done = 0
    while done < len(buffer):
        n = fh.readinto(buffer[done : done + CHUNK])  # type: ignore[attr-defined]
        if not n:
            break
        done += n
    return done


def gzip_errors(fn: Any, *args: Any) -> Any:
    """Call ``fn`` turning gzip/zlib failures into one-line :class:`ReadError` s."""
    try:
        return fn(*args)
    except EOFError:
        raise ReadError("truncated gzip stream: the compressed data ends early") from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ReadError(f"corrupt gzip data: {one_line(err)}") from None


def drain(fh: BinaryIO, limit: int) -> int:
    """Read and discard up to ``limit`` bytes (checks a compressed stream to its end); returns the count."""
    total = 0
    while total < limit:
        chunk = fh.read(min(CHUNK, limit - total))
        if not chunk:
            break
        total += len(chunk)
    return total


def open_gzip(path: Path) -> gzip.GzipFile:
    return gzip.GzipFile(filename=str(path), mode="rb")


def inside_folder(path: Path, name: str, field_name: str) -> Path:
    """The file ``name`` that the header of ``path`` refers to, if it stays in ``path``'s folder.

    Absolute names, names that climb out (``..``) and symlinks that resolve outside are refused, so no
    byte outside the scan's folder is ever read.
    """
    if not name or os.path.isabs(name) or Path(name).drive or name.startswith(("\\", "~")):
        raise ReadError(f"{field_name} {name!r} is an absolute path; it must name a file beside the header")
    folder = path.parent
    target = Path(os.path.normpath(folder / name))
    real_folder = Path(os.path.realpath(folder))
    if not Path(os.path.normpath(os.path.abspath(target))).is_relative_to(os.path.abspath(folder)) or not Path(
        os.path.realpath(target)
    ).is_relative_to(real_folder):
        raise ReadError(f"{field_name} {name!r} points outside the scan's folder")
    return target


def fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] if text else type(err).__name__


def inflated_size(fh: BinaryIO, wbits: int, stop: int) -> int:
    """Bytes a zlib (``wbits`` 15) or gzip (31) stream expands to, counted in chunks up to ``stop``."""
    inflater = zlib.decompressobj(wbits)
    total = 0
    try:
        while total < stop and not inflater.eof:
            data = inflater.unconsumed_tail or fh.read(CHUNK)
            if not data:
                kind = "gzip" if wbits > 15 else "compressed"
                raise ReadError(f"truncated {kind} stream: the compressed data ends early")
            total += len(inflater.decompress(data, CHUNK))
    except zlib.error as err:
        raise ReadError(f"corrupt compressed data: {one_line(err)}") from None
    return total
