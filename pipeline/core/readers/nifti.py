"""NIfTI-1/2 (``.nii``, ``.nii.gz``) with nibabel's header parser and our own bounded data read.

The header is parsed from the first bytes of the (streamed) file; the declared size is checked against the
voxel limit and the file size before anything is allocated; the voxel data are then decompressed straight
into one buffer of exactly the declared size, and the rest of the stream is checked to its end in chunks.
Scaling (``scl_slope``/``scl_inter``) is applied as nibabel's ``dataobj`` does.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np

from pipeline.core.readers.base import (
    Header,
    ReadError,
    check_compressed_size,
    check_declared,
    drain,
    fmt,
    gzip_errors,
    one_line,
    open_gzip,
    read_into,
)

SUFFIXES = (".nii", ".nii.gz")
MAX_HEADER_BYTES = 64 * 2**20  # header + extensions; more than this is not a scan
TRAILING_CHECK = 64 * 2**20  # bytes after the voxel data read to verify the gzip stream's end


@contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        with open_gzip(path) as gz:
            yield gz  # type: ignore[misc]
    elif path.name.lower().endswith(".gz"):
        raise ReadError("corrupt gzip data: the file is not gzip-compressed")
    else:
        with path.open("rb") as fh:
            yield fh


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    buf = bytearray(n)
    got = gzip_errors(read_into, fh, memoryview(buf))
    return bytes(buf[:got])


def _parse_header(fh: BinaryIO) -> tuple[Any, int]:
    """The nibabel header (with extensions) from the start of the stream, and the voxel data offset."""
    head = _read_exact(fh, 540)
    if len(head) < 348:
        raise ReadError(f"truncated: {len(head)} bytes is too short for a NIfTI header")
    sizeof_hdr = {int.from_bytes(head[:4], order) for order in ("little", "big")}
    if not sizeof_hdr & {348, 540}:
        raise ReadError("not a NIfTI file (bad header size field)")
    klass: Any = nib.Nifti2Header if 540 in sizeof_hdr else nib.Nifti1Header
    try:
        with _quiet_nibabel():
            bare = klass.from_fileobj(io.BytesIO(head), check=False)
            offset = int(bare.get_data_offset())
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise ReadError(f"not a valid NIfTI file: {one_line(err)}") from None
    if offset > MAX_HEADER_BYTES:
        raise ReadError(f"header declares voxel data at byte {offset}, beyond any NIfTI header ({MAX_HEADER_BYTES})")
    start = head + _read_exact(fh, max(offset - len(head), 0))
    try:
        with _quiet_nibabel():
            header = klass.from_fileobj(io.BytesIO(start), check=False)
    except Exception as err:  # noqa: BLE001
        raise ReadError(f"not a valid NIfTI file: {one_line(err)}") from None
    _check_spacing(header)
    return header, offset


def _declared(header: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, data type and byte count the header declares (checked against the voxel limit)."""
    ndim = int(header["dim"][0])
    if not 1 <= ndim <= 7:
        raise ReadError(f"not a valid NIfTI file: dim[0] = {ndim} (the number of dimensions must be 1..7)")
    try:
        dtype = np.dtype(header.get_data_dtype())
    except Exception:  # noqa: BLE001 - nibabel raises a bare KeyError for unknown codes
        raise ReadError(f"not a valid NIfTI file: unknown data type code {int(header['datatype'])}") from None
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
    except Exception as err:  # noqa: BLE001
        raise ReadError(f"not a valid NIfTI file: {one_line(err)}") from None
    return shape, dtype, check_declared(shape, dtype.itemsize)


def _open_checked(path: Path, fh: BinaryIO, compressed: bool) -> tuple[Any, int, int]:
    """Parse and size-check the header; returns it, the data offset and the declared bytes of voxel data."""
    header, offset = _parse_header(fh)
    shape, dtype, need = _declared(header)
    size = path.stat().st_size
    if compressed:
        check_compressed_size(size, offset + need)
    elif size - offset < need:
        raise ReadError(
            f"truncated: header promises {need} bytes of voxel data ({'x'.join(map(str, shape))} {dtype}) "
            f"but the file holds {max(size - offset, 0)}"
        )
    return header, offset, need


def read(path: Path, with_data: bool) -> tuple[np.ndarray | None, Header]:
    """Header (and voxel data when ``with_data``) of a NIfTI file; the whole stream is always checked."""
    with _open(path) as fh:
        compressed = not isinstance(fh, io.BufferedReader)
        header, offset, need = _open_checked(path, fh, compressed)
        shape, dtype = header.get_data_shape(), header.get_data_dtype()
        gzip_errors(fh.seek, offset)  # a gzip stream seeks by decompressing in chunks (bounded)
        if with_data:
            buf = bytearray(need)
            got = gzip_errors(read_into, fh, memoryview(buf))
        else:
            buf, got = None, gzip_errors(drain, fh, need) if compressed else need
        if got < need:
            raise ReadError(
                f"truncated: header promises {need} bytes of voxel data ({'x'.join(map(str, shape))} {dtype}) "
                f"but the file holds {got}"
            )
        if compressed:
            gzip_errors(drain, fh, TRAILING_CHECK)
    data = None
    if buf is not None:
        raw = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F")
        slope, inter = header.get_slope_inter()
        data = nib.volumeutils.apply_read_scaling(raw, 1.0 if slope is None else slope, 0.0 if inter is None else inter)
    return data, _header(header)


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fixing messages (we report problems ourselves)."""
    log = nib.imageglobals.logger
    propagate = log.propagate
    log.propagate = False
    try:
        with nib.imageglobals.LoggingOutputSuppressor():
            yield
    finally:
        log.propagate = propagate


def _check_spacing(header: Any) -> None:
    """Raw pixdim (nibabel silently 'fixes' zero and negative ones on load)."""
    ndim = int(header["dim"][0])
    pixdim = [float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 1), 3)]]
    if not all(np.isfinite(pixdim)) or min(pixdim) <= 0:
        raise ReadError(f"zero or negative voxel spacing {fmt(pixdim)} in the header (pixdim)")


def _header(header: Any) -> Header:
    with _quiet_nibabel():
        shape = tuple(int(s) for s in header.get_data_shape())
        zooms = tuple(float(z) for z in header.get_zooms()[: min(len(shape), 3)])
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    return Header(shape, zooms, affine, str(header.get_data_dtype()), native=header)


def read_header(path: Path) -> Header:
    return read(path, with_data=False)[1]


def read_array(path: Path) -> tuple[np.ndarray, Header]:
    data, header = read(path, with_data=True)
    assert data is not None
    return data, header
