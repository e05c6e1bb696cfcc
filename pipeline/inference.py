"""Sliding-window (3D) and slice-wise (2D) inference, and prediction back in each scan's own geometry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import Invertd

from pipeline.dataset import Case
from pipeline.model_folder import load_model_folder
from pipeline.preprocessing import Plan, case_data
from pipeline.transforms import preprocessing

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    slice_axis: int = 2,
    overlap: float = 0.5,
    sw_batch_size: int = 8,
    blend: str = "gaussian",
) -> Inferer:
    """MONAI's sliding-window inferer for 3D models, its slice inferer for 2D models."""
    kwargs = {"roi_size": tuple(patch_size), "sw_batch_size": sw_batch_size, "overlap": overlap, "mode": blend}
    if spatial_dims == 3:
        return SlidingWindowInferer(**kwargs)
    return SliceInferer(spatial_dim=slice_axis, **kwargs)


def mirror_axes(spatial_dims: int, slice_axis: int) -> list[tuple[int, ...]]:
    """Flip combinations (tensor dims of a (B, C, X, Y, Z) volume) used for mirroring TTA."""
    axes = [a for a in range(3) if spatial_dims == 3 or a != slice_axis]
    dims = [a + 2 for a in axes]
    return [c for r in range(1, len(dims) + 1) for c in combinations(dims, r)]


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, image: torch.Tensor, inferer: Inferer, mirror: Sequence[tuple[int, ...]] = ()
) -> torch.Tensor:
    """Softmax probabilities (B, K, X, Y, Z) of a batch of whole volumes, averaged over mirrorings."""
    use_amp = image.device.type == "cuda"
    with torch.autocast("cuda", enabled=use_amp):
        probs = torch.softmax(inferer(image, model).float(), dim=1)
        for dims in mirror:
            flipped = inferer(torch.flip(image, dims), model).float()
            probs += torch.flip(torch.softmax(flipped, dim=1), dims)
    return probs / (1 + len(mirror))


class Predictor:
    """Runs a trained model folder on scans and returns label maps on each scan's own voxel grid."""

    def __init__(
        self, model_dir: str | Path, device: str | torch.device | None = None, mirror_tta: bool | None = None
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model, self.meta = load_model_folder(model_dir, self.device)
        self.plan = Plan.from_dict(self.meta["plan"])
        inf = self.meta.get("inference", {})
        slice_axis = self.meta.get("slice_axis", 2)
        self.inferer = build_inferer(
            self.meta["spatial_dims"],
            self.meta["patch_size"],
            slice_axis,
            inf.get("overlap", 0.5),
            inf.get("sw_batch_size", 8),
            inf.get("blend", "gaussian"),
        )
        use_tta = inf.get("mirror_tta", False) if mirror_tta is None else mirror_tta
        self.mirror = mirror_axes(self.meta["spatial_dims"], slice_axis) if use_tta else []
        self.chain = preprocessing(
            self.plan.target_spacing,
            with_label=False,
            normalization=self.plan.normalization,
            crop_foreground=self.plan.crop_foreground,
        )
        self.invert = Invertd("pred", transform=self.chain, orig_keys="image", nearest_interp=False)

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        """Label map (uint8) with exactly the shape of the case's image file, and that image."""
        data = self.chain(case_data(Case(case.case_id, case.images, None)))
        image: MetaTensor = data["image"]
        probs = predict_probabilities(self.model, image[None].to(self.device), self.inferer, self.mirror)[0]
        data["pred"] = MetaTensor(probs.cpu(), meta=image.meta)
        native = self.invert(data)["pred"]
        labels = torch.argmax(native, dim=0).numpy().astype(np.uint8)
        reference = nib.load(str(case.images[0]))
        if labels.shape != tuple(reference.shape[:3]):
            raise RuntimeError(f"{case.images[0]}: prediction shape {labels.shape} != image shape {reference.shape}")
        return labels, reference
