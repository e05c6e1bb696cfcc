"""The classic U-Net (Ronneberger et al., 2015) for 2D or 3D images, read like the U diagram."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.networks.unet_parts import (
    ALLOWED_ACTS,
    DoubleConv,
    Down,
    OutConv,
    Up,
    check_choice,
    check_network_options,
    pad_or_crop_to,
)


class ClassicUNet(nn.Module):
    """Classic U-Net (Ronneberger et al., 2015) for 2D or 3D images.

    Level ``i`` (``0 <= i <= depth``) has ``base_width * 2**i`` feature maps
    (with bilinear upsampling the bottleneck is halved, as in the classic
    design, so that the concatenations stay balanced). Inputs of any spatial
    size >= 1 are accepted: ``forward`` zero-pads them to a multiple of
    ``2**depth``, runs the network and crops the logits back, so the output has
    the input's spatial shape and ``out_channels`` channels.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_width: int = 32,
        depth: int = 4,
        upsample: str = "transpose",
        norm: str = "instance",
        dropout: float = 0.0,
        act: str = "leakyrelu",
    ) -> None:
        super().__init__()
        check_network_options(spatial_dims, in_channels, out_channels, base_width, depth, upsample, norm, dropout)
        check_choice("act", act, ALLOWED_ACTS)

        self.spatial_dims = spatial_dims
        self.depth = depth
        self.upsample = upsample
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.widths = tuple(widths)
        factor = 2 if upsample == "bilinear" else 1
        kw = {"norm": norm, "dropout": dropout, "act": act}

        self.inc = DoubleConv(spatial_dims, in_channels, widths[0], **kw)
        self.downs = nn.ModuleList(
            Down(
                spatial_dims,
                widths[i],
                widths[i + 1] // (factor if i == depth - 1 else 1),
                **kw,
            )
            for i in range(depth)
        )
        # Up step i goes from level i + 1 back to level i; concat has 2 * widths[i] channels.
        self.ups = nn.ModuleList(
            Up(
                spatial_dims,
                2 * widths[i],
                widths[i] // factor if i > 0 else widths[0],
                upsample=upsample,
                **kw,
            )
            for i in reversed(range(depth))
        )
        self.outc = OutConv(spatial_dims, widths[0], out_channels)

    def _padded_shape(self, shape: Sequence[int]) -> list[int]:
        """Smallest multiple of ``2**depth`` per dim; bottleneck keeps >= 2 voxels."""
        m = 2**self.depth
        target = [max(1, math.ceil(s / m)) * m for s in shape]
        if all(t == m for t in target):
            # A 1-voxel bottleneck breaks instance/batch norm in training mode.
            target[-1] = 2 * m
        return target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits with shape ``(B, out_channels, *x.shape[2:])``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"Expected a {self.spatial_dims + 2}D tensor (B, C, *spatial), got shape {tuple(x.shape)}")
        in_shape = list(x.shape[2:])
        x = pad_or_crop_to(x, self._padded_shape(in_shape))

        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return pad_or_crop_to(self.outc(y), in_shape)
