"""Segmentation network definitions.

Contains a from-scratch implementation of the classic U-Net (Ronneberger et al.,
2015) for 2D and 3D inputs, plus a small factory (:func:`build_model`) that
also builds a few MONAI reference architectures with a common set of options.

All networks return raw logits (no softmax / sigmoid).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_ACTS",
    "ALLOWED_MODELS",
    "ALLOWED_NORMS",
    "ALLOWED_SPATIAL_DIMS",
    "ALLOWED_UPSAMPLE",
    "ClassicUNet",
    "DoubleConv",
    "Down",
    "OutConv",
    "Up",
    "build_model",
    "count_parameters",
]

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

#: Maximum number of feature maps per level for DynUNet (nnU-Net convention).
DYNUNET_MAX_FILTERS = 320


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_choice(what: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` if ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(
            f"Unknown {what} {value!r}; allowed values: {', '.join(map(repr, allowed))}"
        )


def _check_positive_int(what: str, value: int, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _check_dropout(dropout: float) -> None:
    """Raise ``ValueError`` unless ``0 <= dropout < 1``."""
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


# --------------------------------------------------------------------------- #
# layer factories
# --------------------------------------------------------------------------- #
def _conv_cls(spatial_dims: int) -> type[nn.Module]:
    _check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    _check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def _pool_cls(spatial_dims: int) -> type[nn.Module]:
    _check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


def _norm_layer(spatial_dims: int, norm: str, channels: int) -> nn.Module:
    """Instance norm (with learnable affine) or batch norm for ``channels`` maps."""
    _check_choice("norm", norm, ALLOWED_NORMS)
    if norm == "instance":
        cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return cls(channels, affine=True)
    cls = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    return cls(channels)


def _act_layer(act: str) -> nn.Module:
    _check_choice("act", act, ALLOWED_ACTS)
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01, inplace=True)
    if act == "prelu":
        return nn.PReLU()
    return nn.ReLU(inplace=True)


def _pad_or_crop_to(x: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """Symmetrically zero-pad (or crop) the spatial dims of ``x`` to ``target``."""
    diffs = [t - s for t, s in zip(target, x.shape[2:], strict=True)]
    if not any(diffs):
        return x
    pads: list[int] = []
    for d in reversed(diffs):  # F.pad expects the last dimension first
        pads.extend((d // 2, d - d // 2))  # negative values crop
    return F.pad(x, pads)


# --------------------------------------------------------------------------- #
# U-Net building blocks
# --------------------------------------------------------------------------- #
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
        _check_choice("norm", norm, ALLOWED_NORMS)
        _check_choice("act", act, ALLOWED_ACTS)
        _check_dropout(dropout)
        mid_ch = out_ch if mid_ch is None else mid_ch
        for what, value in (("in_ch", in_ch), ("out_ch", out_ch), ("mid_ch", mid_ch)):
            _check_positive_int(what, value)
        conv = _conv_cls(spatial_dims)
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_ch, mid_ch), (mid_ch, out_ch)):
            layers += [
                conv(c_in, c_out, kernel_size=3, padding=1, bias=False),
                _norm_layer(spatial_dims, norm, c_out),
                _act_layer(act),
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
        self.pool = _pool_cls(spatial_dims)(kernel_size=2)
        self.conv = DoubleConv(
            spatial_dims, in_ch, out_ch, norm=norm, dropout=dropout, act=act
        )

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
        _check_choice("upsample", upsample, ALLOWED_UPSAMPLE)
        _check_positive_int("in_ch", in_ch, minimum=2)
        self.upsample_mode = upsample
        half = in_ch // 2
        if upsample == "bilinear":
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up: nn.Module = nn.Upsample(
                scale_factor=2, mode=mode, align_corners=False
            )
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
            self.up = _conv_transpose_cls(spatial_dims)(
                in_ch, half, kernel_size=2, stride=2
            )
            self.conv = DoubleConv(
                spatial_dims, in_ch, out_ch, norm=norm, dropout=dropout, act=act
            )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, match it to ``skip``'s size, concatenate and convolve."""
        x = self.up(x)
        x = _pad_or_crop_to(x, skip.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1[x1] convolution mapping features to ``n_classes`` logits."""

    def __init__(self, spatial_dims: int, in_ch: int, n_classes: int) -> None:
        super().__init__()
        self.conv = _conv_cls(spatial_dims)(in_ch, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project to class logits."""
        return self.conv(x)


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
        _check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
        _check_choice("upsample", upsample, ALLOWED_UPSAMPLE)
        _check_choice("norm", norm, ALLOWED_NORMS)
        _check_choice("act", act, ALLOWED_ACTS)
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("base_width", base_width)
        _check_positive_int("depth", depth)
        _check_dropout(dropout)

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
            raise ValueError(
                f"Expected a {self.spatial_dims + 2}D tensor (B, C, *spatial), got shape {tuple(x.shape)}"
            )
        in_shape = list(x.shape[2:])
        x = _pad_or_crop_to(x, self._padded_shape(in_shape))

        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return _pad_or_crop_to(self.outc(y), in_shape)


# --------------------------------------------------------------------------- #
# factory
# --------------------------------------------------------------------------- #
def _monai_act(act: str) -> tuple[str, dict]:
    """MONAI activation spec for one of ``ALLOWED_ACTS`` (leaky ReLU slope 0.01, as nnU-Net)."""
    _check_choice("activation", act, ALLOWED_ACTS)
    if act == "prelu":
        return ("prelu", {})
    if act == "leakyrelu":
        return ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
    return ("relu", {"inplace": True})


def _monai_norm(norm: str) -> tuple[str, dict]:
    """MONAI norm spec: instance norm with learnable affine, or batch norm."""
    _check_choice("norm", norm, ALLOWED_NORMS)
    return ("instance", {"affine": True}) if norm == "instance" else ("batch", {})


def build_model(
    name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    base_width: int = 16,
    depth: int = 4,
    upsample: str = "transpose",
    norm: str = "instance",
    dropout: float = 0.0,
    full_resolution_width: int = 0,
    activation: str | None = None,
    deep_supervision: bool = False,
) -> torch.nn.Module:
    """Build a segmentation network returning logits.

    Args:
        name: one of ``ALLOWED_MODELS``: ``"classic_unet"`` (:class:`ClassicUNet`),
            ``"monai_unet"`` (``monai.networks.nets.UNet``, 2 residual units),
            ``"basic_unet"`` (``monai.networks.nets.BasicUNet``, fixed depth 4) or
            ``"dynunet"`` (``monai.networks.nets.DynUNet``, needs ``depth >= 2``,
            filters capped at 320).
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        base_width: feature maps at the first level; level ``i`` has ``base_width * 2**i``.
        depth: number of 2x downsampling steps.
        upsample: ``"transpose"`` or ``"bilinear"``. Used by ``classic_unet`` and
            ``basic_unet`` (``"bilinear"`` -> non-trainable linear interpolation);
            ``monai_unet`` and ``dynunet`` always use transposed convolutions.
        norm: ``"instance"`` or ``"batch"``.
        dropout: dropout probability in ``[0, 1)``.
        full_resolution_width: ``monai_unet`` only. MONAI's UNet strides its very first
            convolution, so no layer sees the input at full resolution and the output is
            an upsampled half-resolution map. A width > 0 adds a level of that many feature
            maps at full resolution (``channels=(w, base_width, ...)``, ``strides=(1, 2, ...)``):
            slower, sharper boundaries on small structures. 0 keeps MONAI's layout.
        activation: one of ``ALLOWED_ACTS``, or ``None`` for each network's own default
            (leaky ReLU for ``classic_unet`` and ``dynunet``, PReLU for ``monai_unet``, leaky
            ReLU with slope 0.1 for ``basic_unet``).
        deep_supervision: ``dynunet`` only. In training mode the network then returns the
            output of every decoder level (``depth`` of them), upsampled to the input size and
            stacked on dim 1 (``(B, depth, C, *S)``, full resolution first; see
            :func:`pipeline.training.engine.make_loss`); in eval mode only the full-resolution logits.

    Returns:
        The model. Outputs have the input's spatial shape for inputs whose size is a
        multiple of ``2**depth`` (any size >= 1 for ``classic_unet``). For the MONAI
        models in training mode the bottleneck (input size / ``2**depth``) must hold
        more than one voxel, otherwise instance/batch norm raises.

    Raises:
        ValueError: for an unknown name or option value.
    """
    _check_choice("model name", name, ALLOWED_MODELS)
    _check_choice("spatial_dims", spatial_dims, ALLOWED_SPATIAL_DIMS)
    _check_choice("upsample", upsample, ALLOWED_UPSAMPLE)
    _check_choice("norm", norm, ALLOWED_NORMS)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("out_channels", out_channels)
    _check_positive_int("base_width", base_width)
    _check_positive_int("depth", depth)
    _check_dropout(dropout)
    if full_resolution_width < 0:
        raise ValueError(f"full_resolution_width must be >= 0, got {full_resolution_width}")
    monai_act = None if activation is None else _monai_act(activation)  # checks the name for every network
    act_kw = {} if monai_act is None else {"act": monai_act}
    if full_resolution_width and name != "monai_unet":
        raise ValueError(f"full_resolution_width applies to monai_unet only (model {name!r})")
    if deep_supervision and name != "dynunet":
        raise ValueError(f"deep_supervision applies to dynunet only (model {name!r})")

    if name in ("monai_unet", "dynunet") and upsample != "transpose":
        logger.warning(
            "%s always uses transposed convolutions; ignoring upsample=%r",
            name,
            upsample,
        )

    model: nn.Module
    if name == "classic_unet":
        model = ClassicUNet(
            spatial_dims,
            in_channels,
            out_channels,
            base_width=base_width,
            depth=depth,
            upsample=upsample,
            norm=norm,
            dropout=dropout,
            act=activation or "leakyrelu",
        )
    elif name == "monai_unet":
        from monai.networks.nets import UNet

        channels = tuple(base_width * 2**i for i in range(depth + 1))
        strides = (2,) * depth
        if full_resolution_width:
            channels, strides = (full_resolution_width, *channels), (1, *strides)
        model = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            num_res_units=2,
            norm=_monai_norm(norm),
            dropout=dropout,
            **act_kw,
        )
    elif name == "basic_unet":
        from monai.networks.nets import BasicUNet

        if depth != 4:
            raise ValueError(
                f"basic_unet has a fixed depth of 4; allowed values for depth: 4 (got {depth})"
            )
        b = base_width
        model = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=(b, b, 2 * b, 4 * b, 8 * b, b),
            norm=_monai_norm(norm),
            dropout=dropout,
            upsample="deconv" if upsample == "transpose" else "nontrainable",
            **act_kw,
        )
    else:  # dynunet
        from monai.networks.nets import DynUNet

        if depth < 2:
            raise ValueError(
                f"dynunet needs depth >= 2 (at least 3 resolution levels), got {depth}"
            )
        strides = [1] + [2] * depth
        model = DynUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * (depth + 1),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=[
                min(base_width * 2**i, DYNUNET_MAX_FILTERS) for i in range(depth + 1)
            ],
            dropout=dropout if dropout > 0 else None,
            norm_name=_monai_norm(norm),
            deep_supervision=deep_supervision,
            deep_supr_num=depth - 1,  # heads besides the full-resolution output (depth >= 2)
            res_block=False,
            **({} if monai_act is None else {"act_name": monai_act}),
        )

    logger.debug(
        "Built %s (%dD, in=%d, out=%d, base_width=%d, depth=%d, upsample=%s, norm=%s, dropout=%g, act=%s): %d params",
        name,
        spatial_dims,
        in_channels,
        out_channels,
        base_width,
        depth,
        upsample,
        norm,
        dropout,
        activation or "default",
        count_parameters(model),
    )
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable (``requires_grad``) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
