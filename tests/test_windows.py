"""Window inference: mirroring TTA per window, validation probabilities."""

from __future__ import annotations

import torch

from pipeline.inference.windows import WindowPredictor, build_inferer, mirror_axes, predict_probabilities
from pipeline.networks.factory import build_model


def test_mirroring_averages_flipped_windows() -> None:
    assert len(mirror_axes(2)) == 3 and len(mirror_axes(3)) == 7
    assert mirror_axes(3, (0,)) == [(2,)] and mirror_axes(3, (0, 2)) == [(2,), (4,), (2, 4)]
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = torch.randn(2, 1, 8, 6, 4)
    out = WindowPredictor(net, mirror_axes(3))(x)
    ref = sum(torch.flip(torch.softmax(net(torch.flip(x, d)), 1), d) for d in [(), *mirror_axes(3)]) / 8
    assert torch.allclose(out, ref, atol=1e-6)
    assert WindowPredictor(net)(x.half()).dtype == torch.float16


def test_predict_probabilities_for_validation_sums_to_one() -> None:
    net = build_model("monai_unet", 2, 1, 3, base_width=4, depth=2).eval()
    inferer = build_inferer(2, (16, 16), slice_axis=2, overlap=0.25, sw_batch_size=4)
    probs = predict_probabilities(net, torch.randn(1, 1, 20, 24, 5), inferer)
    assert probs.shape == (1, 3, 20, 24, 5) and torch.allclose(probs.sum(1), torch.ones(1, 20, 24, 5), atol=1e-4)
