"""Read medical images of any supported format with the checks validation needs.

* NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, everything else (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``)
  with SimpleITK.
* :func:`read_header` / :func:`read_array` return the voxel array in ``(x, y, z[, c])`` order and a
  :class:`Header` whose affine maps voxel indices to RAS world millimetres, for every format. Any failure
  (missing, empty, truncated, corrupt file, ...) is a :class:`ReadError` with a one-line message.
* :class:`SimpleITKReader` is a MONAI ``ImageReader`` for the SimpleITK formats that returns data and meta
  like MONAI's ``ITKReader`` (RAS affine), so ``LoadImaged`` + ``Orientationd`` handle them;
  :class:`PipelineReader` dispatches NIfTI to MONAI's ``NibabelReader`` and the rest to it. Both are
  built on first access, so that validation does not pay for importing MONAI (and torch).
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES

# NIfTI/ITK LPS <-> RAS: flip the first two world axes
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

sitk.ProcessObject.SetGlobalWarningDisplay(False)


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

    @property
    def ndim(self) -> int:
        return len(self.shape)


def suffix_of(path: str | Path) -> str:
    """The format suffix (``.nii.gz`` counts as one), lower case."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def is_nifti(path: str | Path) -> bool:
    return suffix_of(path) in NIFTI_SUFFIXES


def is_sitk(path: str | Path) -> bool:
    return suffix_of(path) in SITK_SUFFIXES


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ReadError("file not found")
    if not path.is_file():
        raise ReadError("not a regular file")
    if path.stat().st_size == 0:
        raise ReadError("empty file (0 bytes)")
    if suffix_of(path) not in SUPPORTED_SUFFIXES:
        raise ReadError(f"unsupported file type {suffix_of(path)!r} (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def read_header(path: str | Path) -> Header:
    """Header geometry of any supported file (reads the whole NIfTI file to check its integrity)."""
    path = Path(path)
    from pipeline.core import dicom

    if dicom.is_dicom_folder(path):  # a DICOM series (folder of slice files)
        return dicom.read_header(path)
    _check_file(path)
    if is_nifti(path):
        return _nifti_header(_open_nifti(path))
    return _sitk_header(_sitk_info(path))


def read_array(path: str | Path) -> tuple[np.ndarray, Header]:
    """Voxel array in ``(x, y, z[, c])`` order (scaling applied) and the header of any supported file."""
    path = Path(path)
    from pipeline.core import dicom

    if dicom.is_dicom_folder(path):  # a DICOM series (folder of slice files)
        return dicom.read_array(path)
    _check_file(path)
    if is_nifti(path):
        img = _open_nifti(path)
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a read error
            raise ReadError(f"cannot decode voxel data: {_one_line(err)}") from None
        return data, _nifti_header(img)
    reader = _sitk_info(path)
    header = _sitk_header(reader)
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise ReadError(f"cannot read voxel data (truncated or corrupt): {_itk_message(err)}") from None
    return sitk_to_xyz(img), header


# --------------------------------------------------------------------------------------------- NIfTI


def _gunzip(raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise ReadError("truncated gzip stream: the compressed data ends early") from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ReadError(f"corrupt gzip data: {_one_line(err)}") from None


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """Fully decompress and parse a NIfTI file; check that it holds all the voxel data its header promises."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw)
    elif path.name.lower().endswith(".gz"):
        raise ReadError("corrupt gzip data: the file is not gzip-compressed")
    if len(raw) < 348:
        raise ReadError(f"truncated: {len(raw)} bytes is too short for a NIfTI header")
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    klass: Any = nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
    if not sizeof_hdr & {348, 540}:
        raise ReadError("not a NIfTI file (bad header size field)")
    try:
        header = klass.header_class.from_fileobj(io.BytesIO(raw), check=False)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise ReadError(f"not a valid NIfTI file: {_one_line(err)}") from None
    _check_nifti_spacing(header)
    try:
        with _quiet_nibabel():
            img = klass.from_bytes(raw)
    except Exception as err:  # noqa: BLE001
        raise ReadError(f"not a valid NIfTI file: {_one_line(err)}") from None
    offset = int(header.get_data_offset())
    need = int(np.prod(img.shape, dtype=np.int64)) * np.dtype(img.get_data_dtype()).itemsize
    have = max(len(raw) - offset, 0)
    if have < need:
        raise ReadError(
            f"truncated: header promises {need} bytes of voxel data ({'x'.join(map(str, img.shape))} "
            f"{img.get_data_dtype()}) but the file holds {have}"
        )
    return img


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


def _check_nifti_spacing(header: Any) -> None:
    """Raw pixdim (nibabel silently 'fixes' zero and negative ones on load)."""
    ndim = int(header["dim"][0])
    pixdim = [float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 1), 3)]]
    if not all(np.isfinite(pixdim)) or min(pixdim) <= 0:
        raise ReadError(f"zero or negative voxel spacing {_fmt(pixdim)} in the header (pixdim)")


def _nifti_header(img: nib.Nifti1Image) -> Header:
    shape = tuple(int(s) for s in img.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms()[: min(len(shape), 3)])
    return Header(shape, zooms, np.asarray(img.affine, dtype=np.float64), str(img.get_data_dtype()))


# ------------------------------------------------------------------------------------------ SimpleITK

_MET_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_NRRD_SIZES = {
    **dict.fromkeys(["signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"], 1),
    **dict.fromkeys(["short", "short int", "signed short", "int16", "int16_t", "ushort", "unsigned short"], 2),
    **dict.fromkeys(["uint16", "uint16_t", "unsigned short int"], 2),
    **dict.fromkeys(["int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"], 4),
    **dict.fromkeys(["longlong", "long long", "int64", "int64_t", "ulonglong", "uint64", "uint64_t"], 8),
    "float": 4,
    "double": 8,
}


def _data_source(path: Path, data_file: str, offset: int) -> tuple[Path, int]:
    """The file holding the voxel data and where they start in it."""
    if data_file.upper() == "LOCAL" or not data_file:
        return path, offset
    target = path.parent / data_file
    if not target.is_file():
        raise ReadError(f"data file {data_file!r} named in the header not found")
    return target, 0


def _check_payload(source: Path, offset: int, need: int, compression: str | None, packed: int | None = None) -> None:
    """Raise when the data hold fewer bytes than ``need`` (after decompression) or do not decompress."""
    if compression is None:
        have = max(source.stat().st_size - offset, 0)
    else:
        with source.open("rb") as fh:
            fh.seek(offset)
            payload = fh.read()
        if packed is not None and len(payload) < packed:
            raise ReadError(
                f"truncated: header promises {packed} bytes of compressed voxel data but the file holds {len(payload)}"
            )
        if compression == "gzip":
            have = len(_gunzip(payload))
        else:  # MetaImage: zlib stream
            try:
                have = len(zlib.decompress(payload[:packed] if packed else payload))
            except zlib.error as err:
                raise ReadError(f"corrupt compressed data: {_one_line(err)}") from None
    if have < need:
        raise ReadError(f"truncated: header promises {need} bytes of voxel data but the file holds {have}")


def _payload_check(path: Path) -> None:
    """MetaImage/NRRD: do the data hold as many bytes as the header promises, and do they decompress?"""
    with path.open("rb") as fh:
        head = fh.read(65536)
    suffix = suffix_of(path)
    if suffix in (".mha", ".mhd"):
        fields: dict[str, str] = {}
        end = None
        for match in re.finditer(rb"([^\n=]+?)\s*=\s*([^\n]*)\n", head):
            fields[match.group(1).decode("latin-1").strip()] = match.group(2).decode("latin-1").strip()
            if match.group(1).strip() == b"ElementDataFile":
                end = match.end()
                break
        if end is None:
            return
        try:
            dims = [int(v) for v in fields["DimSize"].split()]
            need = int(np.prod(dims)) * int(fields.get("ElementNumberOfChannels", 1))
            need *= _MET_SIZES[fields["ElementType"]]
            compressed = fields.get("CompressedData", "False").lower() == "true"
            packed = int(fields["CompressedDataSize"]) if compressed and "CompressedDataSize" in fields else None
        except (KeyError, ValueError):
            return
        if fields["ElementDataFile"].upper() in ("LIST",) or "%" in fields["ElementDataFile"]:
            return  # one file per slice: leave it to ITK
        source, offset = _data_source(path, fields["ElementDataFile"], end)
        _check_payload(source, offset, need, "zlib" if compressed else None, packed)
    elif suffix in (".nrrd", ".nhdr"):
        end = head.find(b"\n\n")
        if end < 0:
            return
        fields = {}
        for line in head[:end].decode("latin-1").splitlines()[1:]:
            if ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.lstrip("=").strip()
        encoding = fields.get("encoding", "raw").lower()
        if encoding not in ("raw", "gzip", "gz") or int(fields.get("line skip", fields.get("lineskip", 0)) or 0):
            return
        try:
            need = int(np.prod([int(v) for v in fields["sizes"].split()])) * _NRRD_SIZES[fields["type"].lower()]
            byte_skip = int(fields.get("byte skip", fields.get("byteskip", 0)) or 0)
        except (KeyError, ValueError):
            return
        if byte_skip < 0:
            return
        data_file = fields.get("data file", fields.get("datafile", ""))
        if " " in data_file.strip() or data_file.upper().startswith("LIST"):
            return  # multi-file data: leave it to ITK
        source, offset = _data_source(path, data_file, end + 2)
        if encoding == "raw":
            _check_payload(source, offset + byte_skip, need, None)
        else:
            _check_payload(source, offset, need, "gzip")


def _sitk_info(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ReadError(f"cannot read the header: {_itk_message(err)}") from None
    spacing = list(reader.GetSpacing())
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ReadError(f"zero or negative voxel spacing {_fmt(spacing)} in the header")
    _payload_check(path)
    return reader


def _sitk_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """4x4 voxel -> RAS affine from ITK (LPS) geometry, as MONAI's ITKReader builds it."""
    dim = len(spacing)
    sr = min(dim, 3)
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    affine = np.eye(4)
    affine[:sr, :sr] = d[:sr, :sr] @ np.diag(np.asarray(spacing, dtype=np.float64)[:sr])
    affine[:sr, 3] = np.asarray(origin, dtype=np.float64)[:sr]
    return _LPS_TO_RAS @ affine


def _sitk_header(reader: sitk.ImageFileReader) -> Header:
    size = tuple(int(s) for s in reader.GetSize())
    ncomp = int(reader.GetNumberOfComponents())
    shape = size + ((ncomp,) if ncomp > 1 else ())
    affine = _sitk_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return Header(shape, tuple(float(s) for s in reader.GetSpacing()[:3]), affine, dtype)


def sitk_to_xyz(img: sitk.Image) -> np.ndarray:
    """SimpleITK image -> numpy array in ``(x, y, z[, c])`` order."""
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() == 1:
        return arr.T
    return np.moveaxis(arr.T, 0, -1)


# --------------------------------------------------------------------------------------------- MONAI


def _is_sitk_or_folder(path: str | Path) -> bool:
    """Read through SimpleITK: NRRD/MetaImage files, DICOM series folders (:mod:`pipeline.core.dicom`)."""
    from pipeline.core import dicom

    return is_sitk(path) or dicom.is_dicom_folder(path)


def _names(filename: Sequence[str | Path] | str | Path) -> tuple:
    return tuple(filename) if isinstance(filename, (list, tuple)) else (filename,)


def _build_monai_readers() -> dict[str, type]:
    """Define the MONAI reader classes (imports MONAI)."""
    from monai.data import ImageReader, NibabelReader

    class SimpleITKReader(ImageReader):
        """MONAI reader for ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` via SimpleITK.

        Data come in ``(x, y, z[, c])`` order and the meta carry a RAS ``affine``, ``original_affine``,
        ``spatial_shape``, ``spacing`` and ``original_channel_dim`` exactly like MONAI's ``ITKReader``.
        """

        def __init__(self, channel_dim: int | None = None) -> None:
            super().__init__()
            self.channel_dim = channel_dim

        def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
            return all(_is_sitk_or_folder(f) for f in _names(filename))

        def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> sitk.Image | list[sitk.Image]:
            names = _names(data)
            from pipeline.core import dicom

            for name in names:
                if not _is_sitk_or_folder(name):
                    raise ValueError(f"{name}: not a SimpleITK format ({', '.join(SITK_SUFFIXES)})")
            images = [dicom.read_image(n) if dicom.is_dicom_folder(n) else sitk.ReadImage(str(n)) for n in names]
            return images if len(names) > 1 else images[0]

        def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
            arrays: list[np.ndarray] = []
            meta: dict = {}
            for image in _names(img):
                data = sitk_to_xyz(image)
                arrays.append(data)
                header = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if not k.startswith("ITK_")}
                header["spacing"] = np.asarray(image.GetSpacing())
                affine = _sitk_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
                header["original_affine"] = affine
                header["affine"] = affine.copy()
                header["space"] = "RAS"
                header["spatial_shape"] = np.asarray(image.GetSize()[:3])
                if self.channel_dim is None:
                    no_channel = data.ndim == len(header["spatial_shape"])
                    header["original_channel_dim"] = float("nan") if no_channel else -1
                else:
                    header["original_channel_dim"] = self.channel_dim
                if not meta:
                    meta = header
                elif not np.allclose(meta["affine"], header["affine"]) or tuple(meta["spatial_shape"]) != tuple(
                    header["spatial_shape"]
                ):
                    raise RuntimeError("channel files differ in affine or spatial shape")
            if len(arrays) == 1:
                return arrays[0], meta
            if isinstance(meta["original_channel_dim"], int):
                return np.concatenate(arrays, axis=meta["original_channel_dim"]), meta
            meta["original_channel_dim"] = 0
            return np.stack(arrays, axis=0), meta

    class PipelineReader(ImageReader):
        """NIfTI through MONAI's ``NibabelReader``, NRRD/MetaImage through :class:`SimpleITKReader`."""

        def __init__(self) -> None:
            super().__init__()
            self.nifti = NibabelReader()
            self.sitk = SimpleITKReader()

        def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
            names = _names(filename)
            return all(is_nifti(f) for f in names) or all(_is_sitk_or_folder(f) for f in names)

        def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> Any:
            if all(_is_sitk_or_folder(f) for f in _names(data)):
                return self.sitk.read(data, **kwargs)
            return self.nifti.read(data, **kwargs)

        def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
            if isinstance(_names(img)[0], sitk.Image):
                return self.sitk.get_data(img)
            return self.nifti.get_data(img)

    classes = {"SimpleITKReader": SimpleITKReader, "PipelineReader": PipelineReader}
    for name, cls in classes.items():  # picklable as pipeline.core.readers.<name>
        cls.__module__, cls.__qualname__ = __name__, name
    return classes


def __getattr__(name: str) -> Any:
    """``SimpleITKReader`` and ``PipelineReader`` (MONAI ``ImageReader`` subclasses), built on first use."""
    if name in ("SimpleITKReader", "PipelineReader"):
        globals().update(_build_monai_readers())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- helpers


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] if text else type(err).__name__


def _itk_message(err: BaseException) -> str:
    """The informative line of a multi-line ITK exception."""
    lines = []
    for line in str(err).splitlines():
        line = line.strip()
        if not line or line.startswith("Exception thrown in SimpleITK"):
            continue
        line = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", line)
        line = re.sub(r"^\[nrrd\]\s*", "", line)
        line = re.sub(r"^sitk::ERROR:\s*", "", line)
        if line and not line.endswith(":") and "trouble" not in line:
            lines.append(line)
    return (lines[-1] if lines else _one_line(err))[:200]
