"""Training-only augmentation applied to a whole batch at once (vectorised torch ops).

Per sample, with its own random draw: small rotation and scaling (one ``affine_grid`` /
``grid_sample`` call for the batch; label by nearest), flips along each spatial axis (or the
configured ones), intensity scale and shift, Gaussian noise, and gamma. Doing this on the batch
instead of per sample keeps the data pipeline from starving the model on a CPU with few cores (see
benchmarks/bench_training.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Pair = tuple[torch.Tensor, torch.Tensor]


def _rotation_matrix(angles: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, d, d) rotation matrices; ``angles`` is (B,) in 2D and (B, 3) in 3D (about x, y, z)."""
    if spatial_dims == 2:
        c, s = torch.cos(angles), torch.sin(angles)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    out = torch.eye(3).repeat(angles.shape[0], 1, 1)
    for axis in range(3):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        rot = torch.eye(3).repeat(angles.shape[0], 1, 1)
        i, j = [a for a in range(3) if a != axis]
        rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = c, -s, s, c
        out = rot @ out
    return out


def window_dims(
    volume_axes: Sequence[int] | None, spatial_dims: int, slice_axis: int = 2, name: str = "axes"
) -> tuple[int, ...]:
    """Spatial dims of a training patch or inference window (0-based) for volume axes (0-2, RAS).

    ``None`` means every dim. A 2D window drops the slice axis: the other two volume axes become
    its dims 0 and 1, and a flip along the slice axis has no 2D counterpart (it is left out).
    ``name`` is the setting the axes come from, for the error message.
    """
    if volume_axes is None:
        return tuple(range(spatial_dims))
    axes = tuple(int(a) for a in volume_axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"{name}: must be distinct volume axes among 0, 1, 2; got {list(axes)}")
    if spatial_dims == 3:
        return tuple(sorted(axes))
    return tuple(sorted(a - (a > slice_axis) for a in axes if a != slice_axis))


@dataclass(frozen=True)
class BatchAugment:
    """Random augmentation of a batch ``image`` (B, C, *S) float and ``label`` (B, 1, *S) int."""

    spatial_dims: int
    anisotropic: bool = False  # 3D: rotate only in-plane (about the last axis)
    p_affine: float = 0.25
    max_rotation: float = math.radians(15)
    max_scale: float = 0.15
    p_flip: float = 0.5
    flip_dims: tuple[int, ...] | None = None  # patch dims (0-based) that may be flipped; None: all
    p_intensity_scale: float = 0.15
    p_intensity_shift: float = 0.15
    p_noise: float = 0.1
    noise_std: float = 0.1
    p_gamma: float = 0.15

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.spatial(image, label, g)
        return self.intensity(image, g), label

    def _rand(self, g: torch.Generator, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    def spatial(
        self, image: torch.Tensor, label: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, d = image.shape[0], self.spatial_dims
        chosen = torch.nonzero(self._rand(g, b) < self.p_affine).flatten()
        if chosen.numel():
            n = chosen.numel()
            if d == 2:
                angles = (self._rand(g, n) * 2 - 1) * self.max_rotation
            else:
                angles = (self._rand(g, n, 3) * 2 - 1) * self.max_rotation
                if self.anisotropic:
                    angles[:, :2] = 0
            scale = 1 + (self._rand(g, n) * 2 - 1) * self.max_scale
            # affine_grid's coordinates run over the reversed axes (x = last dim): flip the matrix accordingly
            rot = _rotation_matrix(angles, d).flip(-1).flip(-2) / scale[:, None, None]
            theta = torch.cat([rot, torch.zeros(n, d, 1)], dim=-1).to(image.dtype)
            size = (n, image.shape[1], *image.shape[2:])
            grid = F.affine_grid(theta, size, align_corners=False)
            image = image.clone()
            label = label.clone()
            image[chosen] = F.grid_sample(
                image[chosen], grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            warped = F.grid_sample(
                label[chosen].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
            )
            label[chosen] = warped.to(label.dtype)
        flips = self._rand(g, b, d) < self.p_flip
        if self.flip_dims is not None:
            allowed = torch.zeros(d, dtype=torch.bool)
            allowed[list(self.flip_dims)] = True
            flips &= allowed
        if flips.any():
            image, label = image.clone(), label.clone()
            for i in torch.nonzero(flips.any(1)).flatten().tolist():
                dims = [a + 1 for a in range(d) if flips[i, a]]  # sample i's spatial dims start at 1
                image[i] = image[i].flip(dims)
                label[i] = label[i].flip(dims)
        return image, label

    def intensity(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, d = image.shape[0], self.spatial_dims
        shape = (b, *([1] * (d + 1)))
        scale = torch.where(self._rand(g, b) < self.p_intensity_scale, 1 + (self._rand(g, b) * 2 - 1) * 0.15, 1.0)
        shift = torch.where(self._rand(g, b) < self.p_intensity_shift, (self._rand(g, b) * 2 - 1) * 0.1, 0.0)
        image = image * scale.view(shape) + shift.view(shape)
        noisy = self._rand(g, b) < self.p_noise
        if noisy.any():
            noise = torch.randn(image.shape, generator=g) * self.noise_std
            image = image + noise * noisy.view(shape)
        gamma_on = self._rand(g, b) < self.p_gamma
        gamma = 0.7 + self._rand(g, b) * 0.8
        for i in torch.nonzero(gamma_on).flatten().tolist():
            lo, hi = image[i].min(), image[i].max()
            span = (hi - lo).clamp_min(1e-8)
            image[i] = ((image[i] - lo) / span).pow(gamma[i]) * span + lo
        return image
