"""Building blocks of the classic U-Net (Ronneberger et al., 2015), for 2D and 3D, as in milesial/Pytorch-UNet.

:class:`DoubleConv` (conv, norm, activation, twice), :class:`Down` (max-pool, DoubleConv), :class:`Up`
(upsample, concatenate the skip, DoubleConv), :class:`OutConv` (1x1 convolution to logits); and the option
names every network of :mod:`pipeline.networks.factory` accepts, with their checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ALLOWED_SPATIAL_DIMS: tuple[int, ...] = (2, 3)
ALLOWED_NORMS: tuple[str, ...] = ("instance", "batch")
ALLOWED_UPSAMPLE: tuple[str, ...] = ("bilinear", "transpose")
ALLOWED_ACTS: tuple[str, ...] = ("leakyrelu", "relu", "prelu")
ALLOWED_MODELS: tuple[str, ...] = (
    "classic_unet",
    "monai_unet",
    "basic_unet",
    "dynunet",
)


def check_choice(what: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` if ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"Unknown {what} {value!r}; allowed values: {', '.join(map(repr, allowed))}")


def check_positive_int(what: str, value: int, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")


def check_dropout(dropout: float) -> None:
    """Raise ``ValueError`` unless ``0 <= dropout < 1``."""
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def check_network_options(
    spatial_dims: int, in_channels: int, out_channels: int, base_width: int, depth: int, upsample: str, norm: str,
    dropout: float,
) -> None:  # fmt: skip
    """Checks of the options every network shares (the classic U-Net and the factory)."""
    check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    check_choice("upsample", upsample, ALLOWED_UPSAMPLE)
    check_choice("norm", norm, ALLOWED_NORMS)
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("base_width", base_width)
    check_positive_int("depth", depth)
    check_dropout(dropout)


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def pool_cls(spatial_dims: int) -> type[nn.Module]:
    check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


def norm_layer(spatial_dims: int, norm: str, channels: int) -> nn.Module:
    """Instance norm (with learnable affine) or batch norm for ``channels`` maps."""
    check_choice("norm", norm, ALLOWED_NORMS)
    if norm == "instance":
        cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return cls(channels, affine=True)
    cls = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    return cls(channels)


def act_layer(act: str) -> nn.Module:
    check_choice("act", act, ALLOWED_ACTS)
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01, inplace=True)
    if act == "prelu":
        return nn.PReLU()
    return nn.ReLU(inplace=True)


def pad_or_crop_to(x: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """Symmetrically zero-pad (or crop) the spatial dims of ``x`` to ``target``."""
    diffs = [t - s for t, s in zip(target, x.shape[2:], strict=True)]
    if not any(diffs):
        return x
    pads: list[int] = []
    for d in reversed(diffs):  # F.pad expects the last dimension first
        pads.extend((d // 2, d - d // 2))  # negative values crop
    return F.pad(x, pads)


class DoubleConv(nn.Module):
    """(3x3[x3] conv -> norm -> activation) x 2, with optional dropout.

    Convolutions have no bias because each is directly followed by a
    normalisation layer that would cancel it.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_ch: int,
        out_ch: int,
        mid_ch: int | None = None,
        norm: str = "instance",
        dropout: float = 0.0,
        act: str = "leakyrelu",
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ALLOWED_NORMS)
        check_choice("act", act, ALLOWED_ACTS)
        check_dropout(dropout)
        mid_ch = out_ch if mid_ch is None else mid_ch
        for what, value in (("in_ch", in_ch), ("out_ch", out_ch), ("mid_ch", mid_ch)):
            check_positive_int(what, value)
        conv = conv_cls(spatial_dims)
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_ch, mid_ch), (mid_ch, out_ch)):
            layers += [
                conv(c_in, c_out, kernel_size=3, padding=1, bias=False),
                norm_layer(spatial_dims, norm, c_out),
                act_layer(act),
            ]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the two conv blocks."""
        return self.block(x)


class Down(nn.Module):
    """Downscaling step: 2x max-pool followed by :class:`DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_ch: int,
        out_ch: int,
        norm: str = "instance",
        dropout: float = 0.0,
        act: str = "leakyrelu",
    ) -> None:
        super().__init__()
        self.pool = pool_cls(spatial_dims)(kernel_size=2)
        self.conv = DoubleConv(spatial_dims, in_ch, out_ch, norm=norm, dropout=dropout, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool then convolve."""
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upscaling step: upsample, concatenate the skip connection, :class:`DoubleConv`.

    ``in_ch`` is the number of channels *after* concatenation, as in the
    classic design:

    * ``upsample="transpose"``: the decoder input has ``in_ch`` channels and a
      stride-2 transposed convolution maps it to ``in_ch // 2``; the skip is
      expected to have ``in_ch - in_ch // 2`` channels.
    * ``upsample="bilinear"``: parameter-free interpolation (bilinear in 2D,
      trilinear in 3D, ``align_corners=False``) keeps the channel count, so the
      decoder input and the skip are both expected to have ``in_ch // 2``
      channels; the DoubleConv then uses a reduced mid width of ``in_ch // 2``.

    If the upsampled tensor and the skip differ in spatial size (odd sizes on
    the way down) the upsampled tensor is zero-padded (or cropped) to match.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_ch: int,
        out_ch: int,
        upsample: str = "transpose",
        norm: str = "instance",
        dropout: float = 0.0,
        act: str = "leakyrelu",
    ) -> None:
        super().__init__()
        check_choice("upsample", upsample, ALLOWED_UPSAMPLE)
        check_positive_int("in_ch", in_ch, minimum=2)
        self.upsample_mode = upsample
        half = in_ch // 2
        if upsample == "bilinear":
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode=mode, align_corners=False)
            self.conv = DoubleConv(
                spatial_dims,
                in_ch,
                out_ch,
                mid_ch=half,
                norm=norm,
                dropout=dropout,
                act=act,
            )
        else:
            self.up = conv_transpose_cls(spatial_dims)(in_ch, half, kernel_size=2, stride=2)
            self.conv = DoubleConv(spatial_dims, in_ch, out_ch, norm=norm, dropout=dropout, act=act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, match it to ``skip``'s size, concatenate and convolve."""
        x = self.up(x)
        x = pad_or_crop_to(x, skip.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1[x1] convolution mapping features to ``n_classes`` logits."""

    def __init__(self, spatial_dims: int, in_ch: int, n_classes: int) -> None:
        super().__init__()
        self.conv = conv_cls(spatial_dims)(in_ch, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project to class logits."""
        return self.conv(x)
