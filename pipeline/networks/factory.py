"""A factory of segmentation networks: the classic U-Net and a few MONAI architectures behind one signature.

:func:`build_model` checks the common options and hands them to one small builder per network. All networks
return raw logits (no softmax / sigmoid).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torch import nn

from pipeline.networks.classic_unet import ClassicUNet
from pipeline.networks.unet_parts import (
    ALLOWED_ACTS,
    ALLOWED_NORMS,
    check_choice,
    check_network_options,
)

logger = logging.getLogger(__name__)

__all__ = ["ALLOWED_MODELS", "build_model", "count_parameters"]

#: Maximum number of feature maps per level for DynUNet (nnU-Net convention).
DYNUNET_MAX_FILTERS = 320


def _monai_act(act: str) -> tuple[str, dict]:
    """MONAI activation spec for one of ``ALLOWED_ACTS`` (leaky ReLU slope 0.01, as nnU-Net)."""
    check_choice("activation", act, ALLOWED_ACTS)
    if act == "prelu":
        return ("prelu", {})
    if act == "leakyrelu":
        return ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
    return ("relu", {"inplace": True})


def _monai_norm(norm: str) -> tuple[str, dict]:
    """MONAI norm spec: instance norm with learnable affine, or batch norm."""
    check_choice("norm", norm, ALLOWED_NORMS)
    return ("instance", {"affine": True}) if norm == "instance" else ("batch", {})


def _act_kw(activation: str | None, key: str = "act") -> dict:
    """The MONAI activation argument, or nothing for the network's own default."""
    return {} if activation is None else {key: _monai_act(activation)}


def _classic_unet(spatial_dims: int, in_ch: int, out_ch: int, o: dict) -> nn.Module:
    return ClassicUNet(
        spatial_dims,
        in_ch,
        out_ch,
        base_width=o["base_width"],
        depth=o["depth"],
        upsample=o["upsample"],
        norm=o["norm"],
        dropout=o["dropout"],
        act=o["activation"] or "leakyrelu",
    )


def _monai_unet(spatial_dims: int, in_ch: int, out_ch: int, o: dict) -> nn.Module:
    """MONAI's UNet (2 residual units per level); optionally one extra level at full resolution."""
    from monai.networks.nets import UNet

    depth, base_width, full = o["depth"], o["base_width"], o["full_resolution_width"]
    channels = tuple(base_width * 2**i for i in range(depth + 1))
    strides: tuple = tuple(s[0] if len(set(s)) == 1 else tuple(s) for s in o["strides"])  # 2: every axis
    if full:
        channels, strides = (full, *channels), (1, *strides)
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=channels,
        strides=strides,
        num_res_units=2,
        norm=_monai_norm(o["norm"]),
        dropout=o["dropout"],
        **_act_kw(o["activation"]),
    )


def _basic_unet(spatial_dims: int, in_ch: int, out_ch: int, o: dict) -> nn.Module:
    """MONAI's BasicUNet (fixed depth 4)."""
    from monai.networks.nets import BasicUNet

    if o["depth"] != 4:
        raise ValueError(f"basic_unet has a fixed depth of 4; allowed values for depth: 4 (got {o['depth']})")
    b = o["base_width"]
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        features=(b, b, 2 * b, 4 * b, 8 * b, b),
        norm=_monai_norm(o["norm"]),
        dropout=o["dropout"],
        upsample="deconv" if o["upsample"] == "transpose" else "nontrainable",
        **_act_kw(o["activation"]),
    )


def _dynunet(spatial_dims: int, in_ch: int, out_ch: int, o: dict) -> nn.Module:
    """MONAI's DynUNet (nnU-Net's network): filters capped at 320, optional deep supervision."""
    from monai.networks.nets import DynUNet

    depth, base_width, dropout = o["depth"], o["base_width"], o["dropout"]
    if depth < 2:
        raise ValueError(f"dynunet needs depth >= 2 (at least 3 resolution levels), got {depth}")
    strides = [[1] * spatial_dims, *o["strides"]]
    return DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=o["kernel_sizes"],
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[min(base_width * 2**i, DYNUNET_MAX_FILTERS) for i in range(depth + 1)],
        dropout=dropout if dropout > 0 else None,
        norm_name=_monai_norm(o["norm"]),
        deep_supervision=o["deep_supervision"],
        deep_supr_num=depth - 1,  # heads besides the full-resolution output (depth >= 2)
        res_block=False,
        **_act_kw(o["activation"], "act_name"),
    )


BUILDERS: dict[str, Callable[[int, int, int, dict], nn.Module]] = {
    "classic_unet": _classic_unet,
    "monai_unet": _monai_unet,
    "basic_unet": _basic_unet,
    "dynunet": _dynunet,
}
ALLOWED_MODELS: tuple[str, ...] = tuple(BUILDERS)


def _check_options(name: str, spatial_dims: int, in_channels: int, out_channels: int, o: dict) -> None:
    """Raise ``ValueError`` for an unknown name or option value, or an option the network cannot take."""
    check_choice("model name", name, ALLOWED_MODELS)
    check_network_options(
        spatial_dims, in_channels, out_channels, o["base_width"], o["depth"], o["upsample"], o["norm"], o["dropout"]
    )
    if o["full_resolution_width"] < 0:
        raise ValueError(f"full_resolution_width must be >= 0, got {o['full_resolution_width']}")
    if o["activation"] is not None:
        _monai_act(o["activation"])  # checks the name for every network
    if o["full_resolution_width"] and name != "monai_unet":
        raise ValueError(f"full_resolution_width applies to monai_unet only (model {name!r})")
    if o["deep_supervision"] and name != "dynunet":
        raise ValueError(f"deep_supervision applies to dynunet only (model {name!r})")
    steps, kernels, depth = o["strides"], o["kernel_sizes"], o["depth"]
    if len(steps) != depth or any(len(s) != spatial_dims for s in steps):
        raise ValueError(f"strides {steps} do not give {depth} pooling steps over {spatial_dims} axes")
    if len(kernels) != depth + 1 or any(len(k) != spatial_dims for k in kernels):
        raise ValueError(f"kernel_sizes {kernels} do not give {depth + 1} levels over {spatial_dims} axes")
    if name in ("classic_unet", "basic_unet") and any(v != 2 for s in steps for v in s):
        logger.warning("%s pools every axis at every level; the planned per-axis strides %s are not used", name, steps)
    if name in ("monai_unet", "dynunet") and o["upsample"] != "transpose":
        logger.warning("%s always uses transposed convolutions; ignoring upsample=%r", name, o["upsample"])


# Long for its docstring (every option of every network, ~55 lines); the body is ~25 lines of plain steps.
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
    strides: Sequence[Sequence[int]] | None = None,
    kernel_sizes: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
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
        strides: per pooling step (``depth`` of them) and axis, e.g. ``[[2, 2, 1], [2, 2, 2]]`` for a
            slow third axis (the plan's topology); ``monai_unet`` and ``dynunet`` only (None: 2 everywhere).
        kernel_sizes: per level (``depth + 1``) and axis; ``dynunet`` only (None: 3 everywhere).

    Returns:
        The model. Outputs have the input's spatial shape for inputs whose size is a
        multiple of ``2**depth`` (any size >= 1 for ``classic_unet``). For the MONAI
        models in training mode the bottleneck (input size / ``2**depth``) must hold
        more than one voxel, otherwise instance/batch norm raises.

    Raises:
        ValueError: for an unknown name or option value.
    """
    options = {
        "base_width": base_width,
        "depth": depth,
        "upsample": upsample,
        "norm": norm,
        "dropout": dropout,
        "full_resolution_width": full_resolution_width,
        "activation": activation,
        "deep_supervision": deep_supervision,
        "strides": [list(s) for s in strides] if strides is not None else [[2] * spatial_dims] * depth,
        "kernel_sizes": [list(k) for k in kernel_sizes] if kernel_sizes else [[3] * spatial_dims] * (depth + 1),
    }
    _check_options(name, spatial_dims, in_channels, out_channels, options)
    model = BUILDERS[name](spatial_dims, in_channels, out_channels, options)
    logger.debug(
        "Built %s (%dD, in=%d, out=%d, %s): %d params",
        name,
        spatial_dims,
        in_channels,
        out_channels,
        ", ".join(f"{k}={v}" for k, v in options.items()),
        count_parameters(model),
    )
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable (``requires_grad``) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
