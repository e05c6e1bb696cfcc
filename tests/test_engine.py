"""Loss, optimiser and schedule helpers of the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.networks.factory import build_model
from pipeline.sampling.locations import class_locations
from pipeline.training.engine import epoch_loader, lr_factor, make_loss, make_optimizer, memory_format, train_epoch


def _logits(labels: torch.Tensor, k: int, scale: float = 8.0) -> torch.Tensor:
    """Confident logits predicting ``labels`` (B, 1, ...) over ``k`` classes."""
    onehot = torch.nn.functional.one_hot(labels[:, 0].long(), k).movedim(-1, 1).float()
    return scale * (2 * onehot - 1)


def test_dice_without_background_punishes_missed_foreground_harder() -> None:
    target = torch.zeros(2, 1, 8, 8, 8)
    target[:, :, 2:4, 2:4, 2:4] = 1  # small foreground: background Dice stays near 1 whatever happens
    missed = _logits(torch.zeros_like(target), 2)  # predicts background everywhere
    with_bg = make_loss(include_background=True)(missed, target)
    without_bg = make_loss(include_background=False)(missed, target)
    assert without_bg > with_bg + 0.3
    perfect = _logits(target, 2)
    assert make_loss(include_background=False)(perfect, target) < 0.05


def test_batch_dice_does_not_blow_up_on_a_patch_without_foreground() -> None:
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, :, 2:6, 2:6, 2:6] = 1  # sample 1 has no foreground at all
    pred = _logits(target, 2)
    pred[1, :, 0, 0, 0] = torch.tensor([-8.0, 8.0])  # one false-positive voxel in the empty patch
    per_sample = make_loss(include_background=False, batch=False)(pred, target)
    batch = make_loss(include_background=False, batch=True)(pred, target)
    assert per_sample > 0.4  # the empty patch's Dice is ~0 on its own
    assert batch < 0.05  # one voxel against the batch's 64 foreground voxels


def test_deep_supervision_loss_weighs_levels_one_half_one_quarter() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    outs = [torch.randn(2, 3, 8, 8, 8) for _ in range(3)]
    single = make_loss(include_background=False, batch=True)
    deep = make_loss(include_background=False, batch=True, levels=3)
    expected = (4 * single(outs[0], target) + 2 * single(outs[1], target) + single(outs[2], target)) / 7
    assert deep(outs, target) == pytest.approx(float(expected), rel=1e-6)
    assert deep([outs[0]] * 3, target) == pytest.approx(float(single(outs[0], target)), rel=1e-6)


def test_train_epoch_with_deep_supervision_learns() -> None:
    torch.manual_seed(0)
    shape = (2, 1, 16, 16, 16)
    label = torch.zeros(shape, dtype=torch.long)
    label[..., 4:12, 4:12, 4:12] = 1
    batches = [{"image": label.float() + 0.1 * torch.randn(shape), "label": label}] * 4
    model = build_model("dynunet", 3, 1, 2, base_width=4, depth=2, deep_supervision=True)
    opt = make_optimizer(model, "adamw", 1e-2, 0.0)
    loss_fn = make_loss(include_background=False, batch=True, levels=2)
    losses = [train_epoch(model, batches, loss_fn, opt, torch.device("cpu")) for _ in range(3)]
    assert losses[-1] < losses[0]


def test_lr_factor_schedules() -> None:
    assert lr_factor("adamw", 0.0) == pytest.approx(1.0)
    assert lr_factor("adamw", 0.5) == pytest.approx(0.5)
    assert lr_factor("adamw", 1.0) == pytest.approx(0.0)
    assert lr_factor("sgd", 0.5) == pytest.approx(0.5**0.9)
    assert lr_factor("sgd", 2.0) == pytest.approx(0.0)  # clamped past the end


def test_make_optimizer() -> None:
    sgd = make_optimizer(torch.nn.Linear(2, 2), "sgd", 0.01, 0.0)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.99
    assert isinstance(make_optimizer(torch.nn.Linear(2, 2), "adamw", 0.01, 0.0), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(torch.nn.Linear(2, 2), "lion", 0.01, 0.0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_training_matches_default_layout(spatial_dims: int) -> None:
    shape = (2, 1, *([16] * spatial_dims))
    batches = [
        {"image": torch.randn(shape, generator=torch.Generator().manual_seed(i)), "label": torch.randint(0, 3, shape)}
        for i in range(2)
    ]
    losses, weights = [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        layout = memory_format(channels_last, spatial_dims)
        model = build_model("monai_unet", spatial_dims, 1, 3, base_width=4, depth=2).to(memory_format=layout)
        opt = make_optimizer(model, "adamw", 1e-3, 0.0)
        losses.append(train_epoch(model, batches, make_loss(), opt, torch.device("cpu"), layout=layout))
        weights.append(next(p for p in model.parameters() if p.dim() == spatial_dims + 2))
    assert memory_format(True, spatial_dims) in (torch.channels_last, torch.channels_last_3d)
    assert weights[1].is_contiguous(memory_format=memory_format(True, spatial_dims))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_epoch_loader_batches_do_not_depend_on_workers() -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((12, 14, 10), np.uint8)
    label[3:6, 4:8, 2:5] = 1
    locs = class_locations(label, 2, rng)
    image = rng.normal(size=(1, 12, 14, 10)).astype(np.float32)
    vols = [{"image": image, "label": label[None], "locations": [locs["c0"], locs["c1"]]}]
    runs = [list(epoch_loader(vols, (8, 8, 8), [0.5, 0.5], 3, 0, 2, 3, workers)) for workers in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == 3
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    other_epoch = next(iter(epoch_loader(vols, (8, 8, 8), [0.5, 0.5], 4, 0, 2, 3, 0)))
    assert not torch.equal(runs[0][0]["image"], other_epoch["image"])


class _Predicts(torch.nn.Module):
    """A 'network' that outputs confident logits of a fixed label map (ignores its input)."""

    def __init__(self, labels: torch.Tensor, k: int) -> None:
        super().__init__()
        self.labels, self.k = labels, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.labels[None, None].expand(x.shape[0], 1, *self.labels.shape), self.k)


@pytest.mark.parametrize("both_empty", [1.0, None])
def test_validation_dice_is_the_evaluation_dice_with_its_empty_policy(both_empty: float | None) -> None:
    """Class 1 overlaps partly, class 2 is in neither map, class 3 only in the reference."""
    from monai.inferers import SimpleInferer

    from pipeline.evaluation.metrics import EmptyPolicy, case_metrics
    from pipeline.training.engine import validate

    ref = torch.zeros(8, 8, 8, dtype=torch.long)
    ref[1:5, 1:5, 1:5], ref[6, 6, 6] = 1, 3
    pred = torch.zeros_like(ref)
    pred[2:6, 1:5, 1:5] = 1
    policy = EmptyPolicy(both_empty=both_empty)
    volume = {"image": np.zeros((1, 8, 8, 8), np.float32), "label": ref[None].numpy()}
    got = validate(_Predicts(pred, 4), [volume], SimpleInferer(), 4, torch.device("cpu"), policy=policy)
    rows = case_metrics(pred.numpy(), ref.numpy(), (1, 1, 1), {1: "a", 2: "b", 3: "c"}, policy=policy)
    expected = np.array([r["dice"] for r in rows])
    np.testing.assert_allclose(got, expected)
    assert got[0] == pytest.approx(0.75) and got[2] == 0.0
    assert (got[1] == 1.0) if both_empty == 1.0 else np.isnan(got[1])


def test_validation_pools_a_groups_volumes() -> None:
    """Two slices of one patient (one with the structure, one with a 1-voxel false positive) and a slice of no
    group: the patient's Dice is the pooled one, the ungrouped slice is its own group."""
    from monai.inferers import SimpleInferer

    from pipeline.training.engine import validate

    class _ByImage(torch.nn.Module):  # predicts the label map stored in the image channel
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _logits(x[:, :1].long(), 2)

    ref_a = np.zeros((1, 6, 6, 1), np.int64)
    ref_a[0, :2, :2] = 1  # 4 voxels
    pred_a = np.zeros_like(ref_a)
    pred_a[0, :2, :1] = 1  # 2 of them
    pred_b = np.zeros_like(ref_a)
    pred_b[0, 5, 5] = 1  # a speck on a slice without the structure
    vols = [
        {"case_id": "a", "group": "p1", "image": pred_a.astype(np.float32), "label": ref_a},
        {"case_id": "b", "group": "p1", "image": pred_b.astype(np.float32), "label": np.zeros_like(ref_a)},
        {"case_id": "c", "image": ref_a.astype(np.float32), "label": ref_a},
    ]
    got = validate(_ByImage(), vols, SimpleInferer(), 2, torch.device("cpu"))
    pooled = 2 * 2 / (3 + 4)  # p1: overlap 2, predicted 2 + 1, reference 4
    assert got[0] == pytest.approx((pooled + 1.0) / 2)
    # without groups, slice by slice: a 2/3, b 0 (a false positive on an empty slice), c 1
    ungrouped = [{k: v for k, v in vol.items() if k != "group"} for vol in vols]
    assert validate(_ByImage(), ungrouped, SimpleInferer(), 2, torch.device("cpu"))[0] == pytest.approx((2 / 3 + 1) / 3)


def test_channels_last_by_default_in_3d_only() -> None:
    assert memory_format(None, 3) == torch.channels_last_3d
    assert memory_format(None, 2) == torch.contiguous_format
    assert memory_format(False, 3) == torch.contiguous_format
