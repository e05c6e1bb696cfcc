"""Sliding-window (3D) and slice-wise (2D) inference, and prediction back in each scan's own geometry.

The path of one scan (:meth:`Predictor.predict`):

1. the deterministic chain of :func:`pipeline.preprocessing.transforms.preprocessing` (load, channel first, RAS,
   resample, crop to the body, normalise), exactly as for the training volumes;
2. MONAI's :class:`~monai.inferers.SlidingWindowInferer` (3D models, Gaussian blending) or
   :class:`~monai.inferers.SliceInferer` (2D models, slice by slice along the trained axis). Each window
   goes through :class:`WindowPredictor` (softmax, optional mirroring TTA per window), so the blended
   output is a probability map and no full-volume softmax or flipped full-volume copy is ever made;
3. back to the scan's voxel grid: reorientation, resampling and crop compose into one affine map
   (:func:`native_mapping`), applied tile by tile (:func:`resample_to_native`) with a per-tile arg-max.
   ``Predictor(..., inverse="invertd")`` uses MONAI's ``Invertd`` instead (one class channel at a time);
   the two agree (tests/test_inference.py), the tiled one needs a fraction of the memory;
4. optionally the largest connected component per class, on the scan's grid.

Memory on large volumes: windows are streamed from the (CPU) volume to the model's device and blended
into an accumulator kept on the CPU. Above ``half_precision_voxels`` voxels (preprocessed grid) the
volume and the accumulator are held in float16 (the network itself still runs in float32 on each
window). The scan-grid probabilities of all classes never exist at once in float32: only one tile does.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations, product
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import Compose, Invertd, LoadImaged
from scipy import ndimage

from pipeline.core import io
from pipeline.core.dataset import Case
from pipeline.inference.model_folder import load_model_folder
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.preprocessor import case_data
from pipeline.preprocessing.transforms import preprocessing
from pipeline.sampling.augment import window_dims

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: preprocessed voxels above which the volume and the blended output are held in float16
DEFAULT_HALF_PRECISION_VOXELS = 32_000_000


class UnreadableScanError(ValueError):
    """A scan file that cannot be read as an image; the message names the file."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    slice_axis: int = 2,
    overlap: float = 0.5,
    sw_batch_size: int = 8,
    blend: str = "gaussian",
    sw_device: str | torch.device | None = None,
    device: str | torch.device | None = None,
) -> Inferer:
    """MONAI's sliding-window inferer for 3D models, its slice inferer for 2D models.

    ``sw_device`` is where windows are run, ``device`` where the blended output is accumulated
    (both default to the input's device).
    """
    kwargs = {
        "roi_size": tuple(patch_size),
        "sw_batch_size": sw_batch_size,
        "overlap": overlap,
        "mode": blend,
        "sw_device": sw_device,
        "device": device,
    }
    if spatial_dims == 3:
        return SlidingWindowInferer(**kwargs)
    return SliceInferer(spatial_dim=slice_axis, **kwargs)


def mirror_axes(spatial_dims: int, dims: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Flip combinations for mirroring TTA, as dims of (B, C, *spatial) window tensors.

    ``dims`` are the window's spatial dims (0-based) that may be mirrored (None: all; see
    :func:`pipeline.sampling.augment.window_dims` for volume axes): every non-empty combination of them.
    """
    chosen = [2 + d for d in (range(spatial_dims) if dims is None else dims)]
    return [c for r in range(1, len(chosen) + 1) for c in combinations(chosen, r)]


class WindowPredictor(torch.nn.Module):
    """Wraps a logits network: softmax probabilities of a window, averaged over its mirrored copies.

    The window is fed to the network in float32 whatever the volume's dtype, and the result is returned
    in the window's dtype (so a float16 volume gets a float16 accumulator in MONAI's inferers).
    """

    def __init__(self, model: torch.nn.Module, mirror: Sequence[tuple[int, ...]] = ()) -> None:
        super().__init__()
        self.model = model
        self.mirror = [tuple(d) for d in mirror]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        with torch.autocast("cuda", enabled=x.device.type == "cuda"):
            probs = torch.softmax(self.model(x).float(), dim=1)
            for dims in self.mirror:
                probs += torch.flip(torch.softmax(self.model(torch.flip(x, dims)).float(), dim=1), dims)
        if self.mirror:
            probs /= 1 + len(self.mirror)
        return probs.to(dtype)


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, image: torch.Tensor, inferer: Inferer, mirror: Sequence[tuple[int, ...]] = ()
) -> torch.Tensor:
    """Softmax probabilities (B, K, X, Y, Z), float32, of a batch of whole preprocessed volumes.

    ``mirror`` are window dims to flip (see :func:`mirror_axes`); probabilities are blended per window.
    """
    return inferer(image, WindowPredictor(model, mirror)).float()


def keep_largest_component(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """Keep only the largest connected component (26-connectivity) of each class; the rest becomes 0.

    Works in place on ``labels`` (and returns it). Equivalent to MONAI's
    ``KeepLargestConnectedComponent(applied_labels=classes, independent=True)``, computed with
    ``scipy.ndimage`` (MONAI's CPU path needs scikit-image, which is not a dependency) and only inside
    each class's bounding box.
    """
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for k in classes:
        box = ndimage.find_objects((labels == k).astype(np.uint8))
        if not box or box[0] is None:
            continue
        sub = labels[box[0]]
        mask = sub == k
        components, n = ndimage.label(mask, structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        sub[mask & (components != int(sizes.argmax()))] = 0
    return labels


def reference_image(path: str | Path) -> nib.Nifti1Image:
    """The scan as NIfTI (header and lazily read data); raises :class:`UnreadableScanError`."""
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
        raise UnreadableScanError(f"{path}: cannot read the scan ({_one_line(err)})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        img = nib.Nifti1Image(img.dataobj, img.affine)
    return img


def itk_to_nifti(path: str | Path, out: str | Path) -> Path:
    """Convert an ITK image (NRRD, MHA, MHD) to NIfTI on the same voxel grid (LPS -> RAS affine)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise UnreadableScanError(f"{path}: cannot read the scan ({_one_line(err)})") from None
    if img.GetDimension() != 3:
        raise UnreadableScanError(f"{path}: expected a 3D image, got {img.GetDimension()}D")
    array = sitk.GetArrayFromImage(img)  # (z, y, x[, components])
    array = np.moveaxis(array, (0, 1, 2), (2, 1, 0))  # -> (x, y, z[, components])
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK is LPS, NIfTI is RAS
    nii = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    nii.set_sform(affine, 1)
    nii.set_qform(affine, 1)
    nib.save(nii, str(out))
    return Path(out)


def chain_kwargs(plan: Plan) -> dict:
    """Arguments of :func:`~pipeline.preprocessing.transforms.preprocessing` for the plan's training chain."""
    if hasattr(plan, "transform_kwargs"):
        return plan.transform_kwargs()
    return {
        "target_spacing": plan.target_spacing,
        "normalization": plan.normalization,
        "crop_foreground": plan.crop_foreground,
    }


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _quantize(p: torch.Tensor) -> np.ndarray:
    return torch.round(p.clamp(0, 1) * 255).to(torch.uint8).numpy()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def save_probabilities(probabilities: np.ndarray, reference: nib.Nifti1Image, path: str | Path) -> Path:
    """Write (X, Y, Z, K) probabilities stored as uint8 with slope 1/255 on the reference's grid.

    Readers that apply the NIfTI scaling (nibabel ``get_fdata``, ITK-SNAP, 3D Slicer) see values in [0, 1].
    """
    if tuple(probabilities.shape[:3]) != tuple(reference.shape[:3]):
        raise ValueError(f"{path}: probabilities {probabilities.shape} do not match reference {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(probabilities, reference.affine, header=header)
    sform, scode = reference.header.get_sform(coded=True)
    qform, qcode = reference.header.get_qform(coded=True)
    img.set_sform(sform if sform is not None else reference.affine, int(scode))
    img.set_qform(qform if qform is not None else reference.affine, int(qcode))
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    img.header["intent_code"] = 1007  # NIFTI_INTENT_VECTOR: one value per class
    return io.write_atomic(path, lambda p: nib.save(img, str(p)))


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


def native_mapping(image: MetaTensor) -> NativeMapping | None:
    """The scan-grid -> preprocessed-grid mapping of a preprocessed image, or None if its chain is not affine.

    Reorientation, resampling and cropping compose into one affine (preprocessed affine^-1 @ scan affine);
    the crop's recorded margins say on which sides the cropped-away voxels lie (background).
    """
    ops = image.applied_operations
    if any(op.get("class") not in AFFINE_OPS for op in ops):
        return None
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
            out[sl] = _quantize(sampled.permute(1, 2, 3, 0))
    return labels, out


@dataclass
class Prediction:
    """One scan's prediction on its own voxel grid."""

    labels: np.ndarray  # uint8 (X, Y, Z), the scan's shape
    reference: nib.Nifti1Image  # the scan (its header is what the mask is written with)
    probabilities: np.ndarray | None  # uint8 (X, Y, Z, K), probability * 255, or None
    seconds: float
    half_precision: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: read, preprocess, infer, ...


class Predictor:
    """Runs a trained model folder on scans and returns label maps on each scan's own voxel grid.

    ``Predictor(model_dir)`` loads a model folder (see :mod:`pipeline.inference.model_folder`). Tests and tools
    may instead pass an already built ``model`` with its ``meta`` (same keys as ``model.json``).
    ``mirror_tta``, ``keep_largest`` and ``half_precision`` (None: by volume size) override the folder's
    inference settings.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        mirror_tta: bool | None = None,
        *,
        model: torch.nn.Module | None = None,
        meta: dict | None = None,
        keep_largest: bool | None = None,
        half_precision: bool | None = None,
        inverse: str = "streaming",
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        if model is not None:
            if meta is None:
                raise ValueError("Predictor: a model needs its meta (the model.json entries)")
            self.model, self.meta = model.to(self.device).eval(), meta
        elif model_dir is not None:
            self.model, self.meta = load_model_folder(model_dir, self.device)
        else:
            raise ValueError("Predictor: give a model folder or a model with its meta")
        self.plan = Plan.from_dict(self.meta["plan"])
        self.labels = {int(k): v for k, v in self.meta.get("labels", self.meta["plan"]["labels"]).items()}
        self.num_classes = int(self.meta["num_classes"])
        inf = self.meta.get("inference", {})
        self.spatial_dims = int(self.meta["spatial_dims"])
        slice_axis = int(self.meta.get("slice_axis", 2))
        self.inferer = build_inferer(
            self.spatial_dims,
            self.meta["patch_size"],
            slice_axis,
            inf.get("overlap", 0.5),
            inf.get("sw_batch_size", 8),
            inf.get("blend", "gaussian"),
            sw_device=self.device,
            device="cpu",
        )
        use_tta = inf.get("mirror_tta", False) if mirror_tta is None else mirror_tta
        dims = window_dims(inf.get("mirror_axes"), self.spatial_dims, slice_axis, "inference.mirror_axes")
        self.mirror = mirror_axes(self.spatial_dims, dims) if use_tta else []
        self.window = WindowPredictor(self.model, self.mirror)
        self.keep_largest = inf.get("keep_largest_component", False) if keep_largest is None else keep_largest
        self.half_precision = half_precision
        if inverse not in ("streaming", "invertd"):
            raise ValueError(f"inverse must be 'streaming' or 'invertd', got {inverse!r}")
        self.inverse = inverse
        self.half_precision_voxels = inf.get("half_precision_voxels", DEFAULT_HALF_PRECISION_VOXELS)
        self.chain = preprocessing(with_label=False, **chain_kwargs(self.plan))
        first = self.chain.transforms[0]
        if not isinstance(first, LoadImaged):  # pragma: no cover - guards a change in transforms.py
            raise TypeError("the preprocessing chain must start with LoadImaged")
        self._load, self._rest = first, Compose(self.chain.transforms[1:])
        self.invert = Invertd("pred", transform=self.chain, orig_keys="image", nearest_interp=False)

    def _use_half(self, voxels: int) -> bool:
        if self.half_precision is not None:
            return self.half_precision
        return self.half_precision_voxels is not None and voxels > self.half_precision_voxels

    def _to_native(self, channel: torch.Tensor, stub: MetaTensor) -> torch.Tensor:
        """One preprocessed-grid channel (X', Y', Z') back on the scan's grid (float32)."""
        data = {"image": stub, "pred": MetaTensor(channel[None].float())}
        return self.invert(data)["pred"][0].as_tensor()

    def predict(self, case: Case, probabilities: bool = False) -> Prediction:
        """Predict one scan (label-free); also its class probabilities on its grid if asked."""
        t0 = time.monotonic()
        timings: dict[str, float] = {}

        marks = [t0]

        def lap(name: str) -> None:
            marks.append(time.monotonic())
            timings[name] = marks[-1] - marks[-2]

        with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
            images = tuple(
                p if is_nifti(p) else itk_to_nifti(p, Path(tmp) / f"{i}.nii") for i, p in enumerate(case.images)
            )
            reference = reference_image(images[0])
            try:
                data = self._load(case_data(Case(case.case_id, images, None)))
            except Exception as err:  # noqa: BLE001 - reported as one clear line
                raise UnreadableScanError(
                    f"{case.images[0]}: cannot read the scan ({_one_line(_root_cause(err))})"
                ) from err
            if images[0] != case.images[0]:  # converted copy: keep its header only, the file goes away
                shape = reference.shape
                reference = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape), reference.affine, reference.header)
        lap("read")
        data = self._rest(data)
        lap("preprocess")
        image: MetaTensor = data.pop("image")
        mapping = native_mapping(image) if self.inverse == "streaming" else None
        stub = MetaTensor(torch.zeros(1), meta=image.meta, applied_operations=image.applied_operations)
        half = self._use_half(int(np.prod(image.shape[1:])))
        volume = image.as_tensor()[None].to(torch.float16 if half else torch.float32)
        del image, data
        with torch.no_grad():
            probs = self.inferer(volume, self.window)[0]  # (K, X', Y', Z') on the CPU
        del volume
        lap("infer")
        if mapping is not None:
            labels, native_probs = resample_to_native(probs, mapping, probabilities)
        else:
            labels, native_probs = self._argmax_native(probs, stub, probabilities)
        del probs
        lap("resample")
        if self.keep_largest:
            keep_largest_component(labels, range(1, self.num_classes))  # probabilities stay as predicted
            lap("largest_component")
        if labels.shape != tuple(reference.shape[:3]):
            raise RuntimeError(f"{case.images[0]}: prediction shape {labels.shape} != image shape {reference.shape}")
        seconds = time.monotonic() - t0
        return Prediction(labels, reference, native_probs, seconds, half, timings)

    def _argmax_native(
        self, probs: torch.Tensor, stub: MetaTensor, keep_probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Running arg-max over classes, each inverted with MONAI's ``Invertd`` on its own (the reference path).

        The background is inverted as ``1 - p0`` so that voxels outside the cropped field of view (padded
        with zeros by the inverse crop) come back as background with probability 1.
        """
        best = 1.0 - self._to_native(1.0 - probs[0].float(), stub)
        labels = torch.zeros(best.shape, dtype=torch.uint8)
        out = None
        if keep_probabilities:
            out = np.empty((*best.shape, probs.shape[0]), dtype=np.uint8)
            out[..., 0] = _quantize(best)
        for k in range(1, probs.shape[0]):
            pk = self._to_native(probs[k], stub)
            labels[pk > best] = k
            torch.maximum(best, pk, out=best)
            if out is not None:
                out[..., k] = _quantize(pk)
            del pk
        return labels.numpy(), out

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        """Label map (uint8) with exactly the shape of the case's image file, and that image."""
        pred = self.predict(case)
        return pred.labels, pred.reference
