"""Networks: unet_parts, classic_unet and the factory (tiny tensors, CPU only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.networks.classic_unet import ClassicUNet
from pipeline.networks.factory import ALLOWED_MODELS, build_model, count_parameters
from pipeline.networks.unet_parts import DoubleConv, Up

monai_nets = pytest.importorskip("monai.networks.nets")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- #
# ClassicUNet: shapes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize(
    ("spatial_dims", "shape", "base_width", "depth"),
    [
        (2, (37, 45), 2, 2),
        (2, (37, 45), 4, 4),
        (2, (32, 32), 3, 3),
        (2, (1, 1), 2, 3),
        (2, (5, 1), 2, 2),
        (3, (19, 23, 13), 2, 2),
        (3, (19, 23, 13), 2, 4),
        (3, (1, 1, 1), 2, 2),
    ],
)
def test_classic_unet_output_shape(
    spatial_dims: int,
    shape: tuple[int, ...],
    base_width: int,
    depth: int,
    upsample: str,
) -> None:
    in_ch, out_ch = 2, 3
    model = ClassicUNet(
        spatial_dims,
        in_ch,
        out_ch,
        base_width=base_width,
        depth=depth,
        upsample=upsample,
    )
    x = torch.randn(2, in_ch, *shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, out_ch, *shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_classic_unet_norm_and_dropout_options(norm: str) -> None:
    model = ClassicUNet(2, 1, 2, base_width=2, depth=2, norm=norm, dropout=0.2)
    norm_cls = nn.InstanceNorm2d if norm == "instance" else nn.BatchNorm2d
    assert any(isinstance(m, norm_cls) for m in model.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    y = model(torch.randn(2, 1, 11, 13))
    assert y.shape == (2, 2, 11, 13)


def test_classic_unet_widths() -> None:
    model = ClassicUNet(2, 1, 2, base_width=3, depth=3)
    assert model.widths == (3, 6, 12, 24)
    assert model.inc.block[0].out_channels == 3
    assert model.outc.conv.in_channels == 3


def test_up_bilinear_reduced_mid_width() -> None:
    up = Up(2, in_ch=16, out_ch=4, upsample="bilinear")
    convs = [m for m in up.conv.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 4]  # mid width = in_ch // 2


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_up_pads_to_skip_size(spatial_dims: int, upsample: str) -> None:
    in_ch = 8
    up = Up(spatial_dims, in_ch, 4, upsample=upsample)
    x_ch = in_ch if upsample == "transpose" else in_ch // 2
    skip_shape = (7, 9, 5)[:spatial_dims]  # odd: upsampled (6, 8, 4) is one voxel short
    x = torch.randn(1, x_ch, *(s // 2 for s in skip_shape))
    skip = torch.randn(1, in_ch // 2, *skip_shape)
    assert up(x, skip).shape == (1, 4, *skip_shape)


def test_double_conv_default_mid() -> None:
    block = DoubleConv(3, 2, 5)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(2, 5), (5, 5)]
    assert block(torch.randn(1, 2, 4, 5, 6)).shape == (1, 5, 4, 5, 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_dims": 1},
        {"upsample": "nearest"},
        {"norm": "group"},
        {"depth": 0},
        {"base_width": 0},
        {"dropout": 1.5},
    ],
)
def test_classic_unet_rejects_bad_options(kwargs: dict) -> None:
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2} | kwargs
    with pytest.raises(ValueError):
        ClassicUNet(**args)


def test_classic_unet_rejects_wrong_ndim() -> None:
    model = ClassicUNet(3, 1, 2, base_width=2, depth=2)
    with pytest.raises(ValueError, match="Expected a 5D tensor"):
        model(torch.randn(1, 1, 8, 8))


# --------------------------------------------------------------------------- #
# ClassicUNet: gradients and learning
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize(("spatial_dims", "shape"), [(2, (13, 10)), (3, (9, 7, 6))])
def test_gradient_flow(
    spatial_dims: int, shape: tuple[int, ...], upsample: str
) -> None:
    model = ClassicUNet(spatial_dims, 1, 3, base_width=2, depth=2, upsample=upsample)
    x = torch.randn(2, 1, *shape)
    target = torch.randint(0, 3, (2, *shape))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()

    params = list(model.named_parameters())
    first_name, _ = params[0]
    last_name, _ = params[-1]
    assert first_name.startswith("inc.")
    assert last_name.startswith("outc.")
    for name, p in params:
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_classic_unet_overfits_single_sample() -> None:
    torch.manual_seed(1234)
    size = 16
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = ((yy - 7.5) ** 2 + (xx - 6.0) ** 2) < 25
    target = disk.long().unsqueeze(0)  # (1, H, W)
    image = target.float().unsqueeze(1) + 0.3 * torch.randn(1, 1, size, size)

    model = ClassicUNet(2, 1, 2, base_width=4, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(image), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        pred = model(image).argmax(1)
    assert (pred == target).float().mean() > 0.95


# --------------------------------------------------------------------------- #
# build_model
# --------------------------------------------------------------------------- #
EXPECTED_TYPES = {
    "classic_unet": ClassicUNet,
    "monai_unet": monai_nets.UNet,
    "basic_unet": monai_nets.BasicUNet,
    "dynunet": monai_nets.DynUNet,
}


def test_allowed_models_cover_expected_types() -> None:
    assert set(ALLOWED_MODELS) == set(EXPECTED_TYPES)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_build_model_type_and_shape(name: str, spatial_dims: int) -> None:
    depth = 4
    # multiple of 2**depth, with a bottleneck of more than one voxel
    shape = (32, 32) if spatial_dims == 2 else (32, 16, 16)
    model = build_model(name, spatial_dims, 1, 3, base_width=2, depth=depth)
    assert isinstance(model, EXPECTED_TYPES[name])
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, *shape))
    assert y.shape == (2, 3, *shape)


@pytest.mark.parametrize("name", ["classic_unet", "monai_unet", "dynunet"])
def test_build_model_other_depth(name: str) -> None:
    model = build_model(name, 2, 1, 2, base_width=2, depth=2)
    with torch.no_grad():
        y = model(torch.randn(1, 1, 8, 12))
    assert y.shape == (1, 2, 8, 12)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_build_model_norm_and_dropout(name: str) -> None:
    model = build_model(name, 2, 1, 2, base_width=2, norm="batch", dropout=0.1)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.Dropout | nn.Dropout2d) for m in model.modules())


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="classic_unet") as exc:
        build_model("vnet", 2, 1, 2)
    for allowed in ALLOWED_MODELS:
        assert allowed in str(exc.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("classic_unet", {"norm": "layer"}, "instance"),
        ("monai_unet", {"upsample": "pixelshuffle"}, "bilinear"),
        ("basic_unet", {"spatial_dims": 1}, "spatial_dims"),
        ("basic_unet", {"depth": 3}, "depth"),
        ("dynunet", {"depth": 1}, "depth"),
        ("dynunet", {"dropout": -0.1}, "dropout"),
    ],
)
def test_build_model_rejects_bad_options(name: str, kwargs: dict, match: str) -> None:
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        build_model(name, **args)


def _first_conv(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))


def test_monai_unet_full_resolution_level() -> None:
    default = build_model("monai_unet", 3, 1, 3, base_width=4, depth=2)
    assert _first_conv(default).stride == (2, 2, 2)  # MONAI's layout: no full-resolution layer
    model = build_model("monai_unet", 3, 1, 3, base_width=4, depth=2, full_resolution_width=2)
    first = _first_conv(model)
    assert first.stride == (1, 1, 1) and first.out_channels == 2
    assert list(model.channels) == [2, 4, 8, 16] and list(model.strides) == [1, 2, 2]
    with torch.no_grad():
        assert model(torch.randn(1, 1, 8, 12, 8)).shape == (1, 3, 8, 12, 8)


@pytest.mark.parametrize(("name", "width"), [("classic_unet", 8), ("monai_unet", -1)])
def test_full_resolution_width_rejected(name: str, width: int) -> None:
    with pytest.raises(ValueError, match="full_resolution_width"):
        build_model(name, 2, 1, 2, full_resolution_width=width)


_ACT_TYPES = {"leakyrelu": nn.LeakyReLU, "relu": nn.ReLU, "prelu": nn.PReLU}
_DEFAULT_ACT = {
    "classic_unet": nn.LeakyReLU,
    "monai_unet": nn.PReLU,
    "basic_unet": nn.LeakyReLU,
    "dynunet": nn.LeakyReLU,
}


def _activation_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, tuple(_ACT_TYPES.values()))}


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
@pytest.mark.parametrize("activation", [None, "leakyrelu", "relu", "prelu"])
def test_activation_option(name: str, activation: str | None) -> None:
    depth = 4 if name == "basic_unet" else 2
    model = build_model(name, 2, 1, 2, base_width=2, depth=depth, activation=activation)
    expected = _DEFAULT_ACT[name] if activation is None else _ACT_TYPES[activation]
    assert _activation_types(model) == {expected}
    if activation == "leakyrelu":
        slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
        assert slopes == {0.01}
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_activation_rejected() -> None:
    with pytest.raises(ValueError, match="activation"):
        build_model("monai_unet", 2, 1, 2, activation="gelu")


def test_dynunet_filters_capped() -> None:
    model = build_model("dynunet", 2, 1, 2, base_width=64, depth=4)
    assert max(model.filters) == 320
    assert list(model.filters) == [64, 128, 256, 320, 320]


# --------------------------------------------------------------------------- #
# count_parameters
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_count_parameters_matches_numel(name: str) -> None:
    model = build_model(name, 2, 1, 2, base_width=2)
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(model) == expected > 0

    larger = build_model(name, 2, 1, 2, base_width=4)
    assert count_parameters(larger) > count_parameters(model)


def test_count_parameters_ignores_frozen() -> None:
    model = ClassicUNet(2, 1, 2, base_width=2, depth=2)
    total = count_parameters(model)
    frozen = sum(p.numel() for p in model.inc.parameters())
    for p in model.inc.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == total - frozen
    assert count_parameters(nn.Identity()) == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dynunet_deep_supervision_outputs(spatial_dims: int) -> None:
    model = build_model("dynunet", spatial_dims, 1, 3, base_width=2, depth=3, deep_supervision=True)
    x = torch.randn(2, 1, *([16] * spatial_dims))
    out = model.train()(x)
    assert out.shape == (2, 3, 3, *x.shape[2:])  # depth levels, full resolution first
    assert not torch.equal(out[:, 0], out[:, 1])  # each level has its own head
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, *x.shape[2:])  # inference: the full-resolution logits only
    plain = build_model("dynunet", spatial_dims, 1, 3, base_width=2, depth=3)
    assert set(plain.state_dict()) < set(model.state_dict())  # the extra heads are saved with the weights


@pytest.mark.parametrize("name", ["classic_unet", "monai_unet", "basic_unet"])
def test_deep_supervision_rejected_outside_dynunet(name: str) -> None:
    with pytest.raises(ValueError, match="deep_supervision applies to dynunet only"):
        build_model(name, 2, 1, 2, depth=4, deep_supervision=True)
