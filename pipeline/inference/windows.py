"""Window-level inference: MONAI's sliding-window (3D) and slice (2D) inferers, softmax and mirroring per window.

Each window goes through :class:`WindowPredictor` (softmax, optional mirroring TTA per window), so the
blended output is a probability map and no full-volume softmax or flipped full-volume copy is ever made.
Training's validation uses the same path (:func:`predict_probabilities`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer

from pipeline.config import InferenceConfig


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    slice_axis: int = 2,
    overlap: float = InferenceConfig.overlap,
    sw_batch_size: int = InferenceConfig.sw_batch_size,
    blend: str = InferenceConfig.blend,
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
    """Wraps logits networks: softmax probabilities of a window, averaged over its mirrored copies and,
    for an ensemble (several networks), over the networks.

    Blending is linear, so averaging per window equals averaging the members' blended probability maps.
    The window is fed to the network in float32 whatever the volume's dtype, and the result is returned
    in the window's dtype (so a float16 volume gets a float16 accumulator in MONAI's inferers).
    """

    def __init__(
        self, model: torch.nn.Module | Sequence[torch.nn.Module], mirror: Sequence[tuple[int, ...]] = ()
    ) -> None:
        super().__init__()
        self.models = torch.nn.ModuleList([model] if isinstance(model, torch.nn.Module) else list(model))
        self.mirror = [tuple(d) for d in mirror]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        probs = torch.zeros((), device=x.device)
        with torch.autocast("cuda", enabled=x.device.type == "cuda"):
            for model in self.models:
                probs = probs + torch.softmax(model(x).float(), dim=1)
                for dims in self.mirror:
                    probs += torch.flip(torch.softmax(model(torch.flip(x, dims)).float(), dim=1), dims)
        count = len(self.models) * (1 + len(self.mirror))
        if count > 1:
            probs /= count
        return probs.to(dtype)


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, image: torch.Tensor, inferer: Inferer, mirror: Sequence[tuple[int, ...]] = ()
) -> torch.Tensor:
    """Softmax probabilities (B, K, X, Y, Z), float32, of a batch of whole preprocessed volumes.

    ``mirror`` are window dims to flip (see :func:`mirror_axes`); probabilities are blended per window.
    """
    return inferer(image, WindowPredictor(model, mirror)).float()
