"""NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK, header checked first.

Before ITK opens a file, its header is parsed here: every data file it names (``ElementDataFile`` /
``data file``, including ``LIST`` and numbered patterns) must lie in the scan's folder; the declared size
must fit the voxel limit; and a single data payload must hold the bytes the header promises (compressed
payloads are inflated in chunks, never whole). Only then does ITK read, with the format's own ImageIO.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.core.readers.base import (
    Header,
    ReadError,
    check_compressed_size,
    check_declared,
    fmt,
    inflated_size,
    inside_folder,
    one_line,
)

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
HEAD_BYTES = 65536  # a header longer than this is not read by us (nor accepted)
MAX_PATTERN_FILES = 100_000

# NIfTI/ITK LPS <-> RAS: flip the first two world axes
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

sitk.ProcessObject.SetGlobalWarningDisplay(False)

_MET_SIZES = {
    **dict.fromkeys(["MET_CHAR", "MET_UCHAR"], 1),
    **dict.fromkeys(["MET_SHORT", "MET_USHORT"], 2),
    **dict.fromkeys(["MET_INT", "MET_UINT", "MET_LONG", "MET_ULONG", "MET_FLOAT"], 4),
    **dict.fromkeys(["MET_LONG_LONG", "MET_ULONG_LONG", "MET_DOUBLE"], 8),
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
_IMAGE_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
_FORMAT = {".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"}
_PATTERN = re.compile(r"%0?\d*d")


def _data_files(path: Path, value: str, rest: Sequence[str], field: str) -> list[Path]:
    """Files the header's data field names, each checked to lie in the scan's folder ([] = in the header file)."""
    value = value.strip()
    parts = value.split()
    if not value or value.upper() == "LOCAL":
        return []
    if parts[0].upper() == "LIST":
        names = [line.strip() for line in rest if line.strip()]
        if not names:
            raise ReadError(f"{field} LIST names no files")
        return [inside_folder(path, name, field) for name in names]
    if len(parts) >= 4 and "%" in parts[0]:
        if len(_PATTERN.findall(parts[0])) != 1 or parts[0].count("%") != 1:
            raise ReadError(f"{field} pattern {parts[0]!r} is not a numbered file pattern (e.g. slice%03d.raw)")
        try:
            lo, hi, step = (int(p) for p in parts[1:4])
        except ValueError:
            raise ReadError(f"{field} pattern {value!r} has non-integer bounds") from None
        numbers = range(lo, hi + (1 if step > 0 else -1), step) if step else range(0)
        if not 0 < len(numbers) <= MAX_PATTERN_FILES:
            raise ReadError(f"{field} pattern {value!r} names {len(numbers)} files")
        return [inside_folder(path, parts[0] % i, field) for i in numbers]
    return [inside_folder(path, value, field)]


def _payload(source: Path, offset: int, need: int, wbits: int | None, packed: int | None = None) -> None:
    """Raise when the data hold fewer than ``need`` bytes (after inflating) or do not inflate."""
    size = source.stat().st_size
    if wbits is None:
        have = max(size - offset, 0)
    else:
        packed_have = max(size - offset, 0)
        if packed is not None and packed_have < packed:
            raise ReadError(
                f"truncated: header promises {packed} bytes of compressed voxel data but the file holds {packed_have}"
            )
        check_compressed_size(packed_have, need)
        with source.open("rb") as fh:
            fh.seek(offset)
            have = inflated_size(fh, wbits, need)
    if have < need:
        raise ReadError(f"truncated: header promises {need} bytes of voxel data but the file holds {have}")


def _check_meta(path: Path, head: bytes) -> None:
    """MetaImage: data files in the folder, size within limits, payload complete."""
    fields: dict[str, str] = {}
    end = None
    for match in re.finditer(rb"([^\n=]+?)\s*=\s*([^\n]*)(?:\n|$)", head):
        key = match.group(1).decode("latin-1").strip()
        fields[key] = match.group(2).decode("latin-1").strip()
        if key == "ElementDataFile":
            end = match.end()
            break
    if end is None:
        return  # no data file named: ITK refuses the header
    rest = head[end:].decode("latin-1").splitlines()
    sources = _data_files(path, fields["ElementDataFile"], rest, "ElementDataFile")
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", 1))
        itemsize = _MET_SIZES[fields["ElementType"]]
        compressed = fields.get("CompressedData", "False").lower() == "true"
        packed = int(fields["CompressedDataSize"]) if compressed and "CompressedDataSize" in fields else None
    except (KeyError, ValueError):
        return  # ITK reports what is wrong with the header
    need = check_declared([*dims, channels], itemsize)
    if len(sources) <= 1:
        source = sources[0] if sources else path
        if not source.is_file():
            raise ReadError(f"data file {fields['ElementDataFile']!r} named in the header not found")
        _payload(source, end if not sources else 0, need, 15 if compressed else None, packed)


def _check_nrrd(path: Path, head: bytes) -> None:
    """NRRD: data files in the folder, size within limits, payload complete."""
    if not head.startswith(b"NRRD"):
        return  # not NRRD at all: ITK refuses it
    end = head.find(b"\n\n")
    text = head[: end if end >= 0 else len(head)].decode("latin-1").splitlines()
    fields: dict[str, str] = {}
    rest: list[str] = []
    for i, line in enumerate(text[1:], start=1):
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
            if key.strip().lower() in ("data file", "datafile"):
                rest = text[i + 1 :]
                if fields[key.strip().lower()].split()[:1] == ["LIST"]:
                    break
    data_file = fields.get("data file", fields.get("datafile", ""))
    sources = _data_files(path, data_file, rest, "data file")
    if end < 0 and not sources:
        raise ReadError("NRRD header does not end (no blank line before the data)")
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        itemsize = _NRRD_SIZES.get(fields["type"].lower(), 1)
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", 0)) or 0)
        line_skip = int(fields.get("line skip", fields.get("lineskip", 0)) or 0)
    except (KeyError, ValueError):
        return  # ITK reports what is wrong with the header
    need = check_declared(sizes, itemsize)
    encoding = fields.get("encoding", "raw").lower()
    if len(sources) > 1 or encoding not in ("raw", "gzip", "gz") or line_skip or byte_skip < 0:
        return  # size checked; the payload is left to ITK
    source, offset = (sources[0], 0) if sources else (path, end + 2)
    if not source.is_file():
        raise ReadError(f"data file {data_file!r} named in the header not found")
    if encoding == "raw":
        _payload(source, offset + byte_skip, need, None)
    else:
        _payload(source, offset, need, 31)


def _info(path: Path) -> sitk.ImageFileReader:
    """Check the header ourselves, then let ITK read the image information."""
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    suffix = path.name.lower()[path.name.rfind(".") :]
    (_check_meta if suffix in (".mha", ".mhd") else _check_nrrd)(path, head)
    reader = sitk.ImageFileReader()
    try:
        image_io = reader.GetImageIOFromFileName(str(path))  # ITK's choice by content and name
        if not image_io:
            raise ReadError("cannot read the header: Unable to determine ImageIO reader")
        if image_io != _IMAGE_IO[suffix]:  # only the IO whose header we checked may read the file
            raise ReadError(f"not a {_FORMAT[suffix]} file (its content is read by ITK's {image_io})")
        reader.SetImageIO(image_io)
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ReadError(f"cannot read the header: {itk_message(err)}") from None
    spacing = list(reader.GetSpacing())
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ReadError(f"zero or negative voxel spacing {fmt(spacing)} in the header")
    check_declared([*reader.GetSize(), reader.GetNumberOfComponents()], 1)
    return reader


def sitk_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """4x4 voxel -> RAS affine from ITK (LPS) geometry, as MONAI's ITKReader builds it."""
    dim = len(spacing)
    sr = min(dim, 3)
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    affine = np.eye(4)
    affine[:sr, :sr] = d[:sr, :sr] @ np.diag(np.asarray(spacing, dtype=np.float64)[:sr])
    affine[:sr, 3] = np.asarray(origin, dtype=np.float64)[:sr]
    return LPS_TO_RAS @ affine


def _header(reader: sitk.ImageFileReader) -> Header:
    size = tuple(int(s) for s in reader.GetSize())
    ncomp = int(reader.GetNumberOfComponents())
    shape = size + ((ncomp,) if ncomp > 1 else ())
    affine = sitk_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return Header(shape, tuple(float(s) for s in reader.GetSpacing()[:3]), affine, dtype)


def sitk_to_xyz(img: sitk.Image) -> np.ndarray:
    """SimpleITK image -> numpy array in ``(x, y, z[, c])`` order."""
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() == 1:
        return arr.T
    return np.moveaxis(arr.T, 0, -1)


def read_header(path: Path) -> Header:
    return _header(_info(path))


#: a 3D Slicer segmentation's segment keys: ``Segment0_Name``, ``Segment0_LabelValue``, ...
_SEGMENT_KEY = re.compile(r"Segment(\d+)_(Name|LabelValue)")


def segment_names(path: Path) -> dict[int, str]:
    """``{label value: segment name}`` of a 3D Slicer segmentation (``.seg.nrrd``); {} for any other file."""
    reader = _info(path)
    fields: dict[str, dict[str, str]] = {}
    for key in reader.GetMetaDataKeys():
        if (match := _SEGMENT_KEY.fullmatch(key)) is not None:
            fields.setdefault(match[1], {})[match[2]] = reader.GetMetaData(key).strip()
    out = {}
    for segment in fields.values():
        value, name = segment.get("LabelValue", ""), one_line(segment.get("Name", ""))[:64]
        if value.isdigit() and name:
            out[int(value)] = name
    return out


def read_array(path: Path) -> tuple[np.ndarray, Header]:
    reader = _info(path)
    header = _header(reader)
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise ReadError(f"cannot read voxel data (truncated or corrupt): {itk_message(err)}") from None
    return sitk_to_xyz(img), header


def itk_message(err: BaseException) -> str:
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
    return (lines[-1] if lines else one_line(err))[:200]
