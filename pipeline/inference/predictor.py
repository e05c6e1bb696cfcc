"""Sliding-window (3D) and slice-wise (2D) inference, and prediction back in each scan's own geometry.

The path of one scan (:meth:`Predictor.predict`):

1. the deterministic chain of :func:`pipeline.preprocessing.transforms.preprocessing` (load, channel first, RAS,
   resample, crop to the body, normalise), exactly as for the training volumes;
2. MONAI's sliding-window (3D) or slice (2D) inferer, softmax and mirroring per window
   (:mod:`pipeline.inference.windows`);
3. back to the scan's voxel grid by the one native mapping (:mod:`pipeline.core.geometry`), tile by tile
   with a per-tile arg-max;
4. optionally the largest connected component per class, on the scan's grid
   (:mod:`pipeline.inference.postprocess`).

Memory on large volumes: windows are streamed from the (CPU) volume to the model's device and blended
into an accumulator kept on the CPU. Above ``half_precision_voxels`` voxels (preprocessed grid) the
volume and the accumulator are held in float16 (the network itself still runs in float32 on each
window). The scan-grid probabilities of all classes never exist at once in float32: only one tile does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged

from pipeline.config import InferenceConfig, to_dict
from pipeline.core import io
from pipeline.core.cases import Case
from pipeline.core.geometry import native_mapping, resample_to_native
from pipeline.core.readers import Header
from pipeline.core.readers.monai_reader import load_image
from pipeline.core.validation import check_scan
from pipeline.inference.model_folder import load_ensemble
from pipeline.inference.postprocess import keep_largest_component
from pipeline.inference.windows import WindowPredictor, build_inferer, default_device, mirror_axes
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.transforms import preprocessing
from pipeline.sampling.augment import window_dims

logger = logging.getLogger(__name__)


class UnreadableScanError(ValueError):
    """A scan file that cannot be read as an image; the message names the file."""


def reference_image(header: Header) -> nib.Nifti1Image:
    """A data-less NIfTI on the scan's voxel grid to write outputs with (a NIfTI scan's sform/qform codes kept)."""
    shape = tuple(header.shape[:3])
    if isinstance(header.native, nib.Nifti1Header):  # NIfTI-2 headers are NIfTI-1 headers' subclass
        return nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape), header.affine, header.native)
    img = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape), header.affine)
    img.set_sform(header.affine, 1)
    img.set_qform(header.affine, 1)
    return img


def read_checked(case: Case, in_channels: int) -> tuple[MetaTensor, nib.Nifti1Image]:
    """The case's scan (one 4D file or one file per channel) as ``LoadImaged`` gives it, after the checks
    ``validate`` runs on every scan; raises :class:`UnreadableScanError` naming the bad file."""
    reads, problems = check_scan(case.case_id, case.images)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UnreadableScanError(f"{problems[0].file}: {problems[0].problem}{more}")
    ok = [r for r in reads if r is not None]
    channels = sum(1 if data.ndim == 3 else int(data.shape[-1]) for data, _ in ok)
    picture = not ok[0][1].physical_spacing  # 2D grey <-> RGB is converted by the chain (MatchChannelsd)
    if channels != in_channels and not (picture and {channels, in_channels} == {1, 3}):
        raise UnreadableScanError(f"{case.images[0]}: {channels} channel(s), the model takes {in_channels}")
    return load_image(ok, case.images[0]), reference_image(ok[0][1])


def save_probabilities(probabilities: np.ndarray, reference: nib.Nifti1Image, path: str | Path) -> Path:
    """Write (X, Y, Z, K) probabilities stored as uint8 with slope 1/255 on the reference's grid.

    Readers that apply the NIfTI scaling (nibabel ``get_fdata``, ITK-SNAP, 3D Slicer) see values in [0, 1].
    """
    try:
        img = io.like(probabilities, reference, np.uint8)
    except ValueError as err:
        raise ValueError(f"{path}: probabilities {err}") from None
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    img.header["intent_code"] = 1007  # NIFTI_INTENT_VECTOR: one value per class
    return io.write_atomic(path, lambda p: nib.save(img, str(p)))


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

    ``Predictor(model_dir)`` loads a model folder (see :mod:`pipeline.inference.model_folder`); a folder of
    model folders (``fold_0/``, ``fold_1/``, ...) or a list of them is an ensemble whose probabilities are
    averaged (:func:`~pipeline.inference.model_folder.load_ensemble` refuses members that differ in plan,
    labels or channels). Tests and tools may instead pass an already built ``model`` with its ``meta`` (same
    keys as ``model.json``). ``mirror_tta``, ``keep_largest`` (True, False or a list of classes; None: the
    ``postprocessing.json`` chosen out of fold, else the folder's setting) and ``half_precision`` (None: by
    volume size) override the folder's inference settings.
    """

    def __init__(
        self,
        model_dir: str | Path | Sequence[str | Path] | None = None,
        device: str | torch.device | None = None,
        mirror_tta: bool | None = None,
        *,
        model: torch.nn.Module | None = None,
        meta: dict | None = None,
        keep_largest: bool | Sequence[int] | None = None,
        half_precision: bool | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        if model is not None:
            if meta is None:
                raise ValueError("Predictor: a model needs its meta (the model.json entries)")
            self.model, self.meta = model.to(self.device).eval(), meta
        elif model_dir is not None:
            models, self.meta = load_ensemble(model_dir, self.device)  # one folder, a folder of folds, or several
            self.model = models[0] if len(models) == 1 else torch.nn.ModuleList(models)
        else:
            raise ValueError("Predictor: give a model folder or a model with its meta")
        self.plan = Plan.from_dict(self.meta["plan"])
        self.labels = {int(k): v for k, v in self.meta.get("labels", self.meta["plan"]["labels"]).items()}
        self.num_classes = int(self.meta["num_classes"])
        inf = {**to_dict(InferenceConfig()), **self.meta.get("inference", {})}  # config.py holds the defaults
        self.spatial_dims = int(self.meta["spatial_dims"])
        slice_axis = int(self.meta.get("slice_axis", 2))  # model folders always record it; 2 = axial
        self.inferer = build_inferer(
            self.spatial_dims,
            self.meta["patch_size"],
            slice_axis,
            inf["overlap"],
            inf["sw_batch_size"],
            inf["blend"],
            sw_device=self.device,
            device="cpu",
        )
        use_tta = inf["mirror_tta"] if mirror_tta is None else mirror_tta
        dims = window_dims(inf["mirror_axes"], self.spatial_dims, slice_axis, "inference.mirror_axes")
        self.mirror = mirror_axes(self.spatial_dims, dims) if use_tta else []
        members = list(self.model) if isinstance(self.model, torch.nn.ModuleList) else self.model
        self.window = WindowPredictor(members, self.mirror)
        if keep_largest is None:  # chosen on out-of-fold predictions (postprocessing.json), else the folder's
            chosen = self.meta.get("postprocessing", {}).get("keep_largest_component")
            keep_largest = chosen if chosen is not None else inf["keep_largest_component"]
        #: classes whose largest connected component alone is kept (True: every foreground class)
        self.keep_largest = list(range(1, self.num_classes)) if keep_largest is True else list(keep_largest or [])
        self.half_precision = half_precision
        self.half_precision_voxels = inf["half_precision_voxels"]
        self.chain = preprocessing(with_label=False, **self.plan.transform_kwargs())
        first = self.chain.transforms[0]
        if not isinstance(first, LoadImaged):  # pragma: no cover - guards a change in transforms.py
            raise TypeError("the preprocessing chain must start with LoadImaged")
        self._rest = Compose(self.chain.transforms[1:])  # the scan itself is read (and checked) by read_checked

    def _use_half(self, voxels: int) -> bool:
        if self.half_precision is not None:
            return self.half_precision
        return self.half_precision_voxels is not None and voxels > self.half_precision_voxels

    def predict(self, case: Case, probabilities: bool = False) -> Prediction:
        """Predict one scan (label-free); also its class probabilities on its grid if asked."""
        t0 = time.monotonic()
        timings: dict[str, float] = {}

        marks = [t0]

        def lap(name: str) -> None:
            marks.append(time.monotonic())
            timings[name] = marks[-1] - marks[-2]

        scan, reference = read_checked(case, int(self.meta.get("in_channels", 1)))
        data = {"image": scan}
        lap("read")
        data = self._rest(data)
        lap("preprocess")
        image: MetaTensor = data.pop("image")
        mapping = native_mapping(image)
        half = self._use_half(int(np.prod(image.shape[1:])))
        volume = image.as_tensor()[None].to(torch.float16 if half else torch.float32)
        del image, data
        with torch.no_grad():
            probs = self.inferer(volume, self.window)[0]  # (K, X', Y', Z') on the CPU
        del volume
        lap("infer")
        labels, native_probs = resample_to_native(probs, mapping, probabilities)
        del probs
        lap("resample")
        if self.keep_largest:
            keep_largest_component(labels, self.keep_largest)  # probabilities stay as predicted
            lap("largest_component")
        if labels.shape != tuple(reference.shape[:3]):
            raise RuntimeError(f"{case.images[0]}: prediction shape {labels.shape} != image shape {reference.shape}")
        seconds = time.monotonic() - t0
        return Prediction(labels, reference, native_probs, seconds, half, timings)

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        """Label map (uint8) with exactly the shape of the case's image file, and that image."""
        pred = self.predict(case)
        return pred.labels, pred.reference
