import pytest
import torch

from pipeline.sampling.augment import BatchAugment, window_dims

OFF = {
    "p_affine": 0.0,
    "p_flip": 0.0,
    "p_intensity_scale": 0.0,
    "p_intensity_shift": 0.0,
    "p_noise": 0.0,
    "p_gamma": 0.0,
}


def _batch(dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (3, 1, 12, 10, 8) if dims == 3 else (3, 1, 12, 10)
    return torch.randn(shape, generator=g), torch.randint(0, 3, shape, generator=g, dtype=torch.uint8)


def test_all_off_is_identity() -> None:
    for dims in (2, 3):
        x, y = _batch(dims)
        xa, ya = BatchAugment(dims, **OFF)(x, y, torch.Generator().manual_seed(1))
        assert torch.equal(xa, x) and torch.equal(ya, y)


def test_zero_rotation_and_scale_affine_is_identity() -> None:
    for dims in (2, 3):
        x, y = _batch(dims)
        aug = BatchAugment(dims, **{**OFF, "p_affine": 1.0}, max_rotation=0.0, max_scale=0.0)
        xa, ya = aug(x, y, torch.Generator().manual_seed(1))
        assert torch.allclose(xa, x, atol=1e-5) and torch.equal(ya, y)


def test_flip_everything() -> None:
    x, y = _batch(3)
    xa, ya = BatchAugment(3, **{**OFF, "p_flip": 1.0})(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(xa, x.flip(2, 3, 4)) and torch.equal(ya, y.flip(2, 3, 4))


def test_flip_only_allowed_dims() -> None:
    x, y = _batch(3)
    xa, ya = BatchAugment(3, **{**OFF, "p_flip": 1.0}, flip_dims=(0,))(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(xa, x.flip(2)) and torch.equal(ya, y.flip(2))
    xa, _ = BatchAugment(3, **{**OFF, "p_flip": 1.0}, flip_dims=())(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(xa, x)


def test_flips_are_per_sample() -> None:
    x, y = _batch(3)
    xa, ya = BatchAugment(3, **{**OFF, "p_flip": 0.5})(x, y, torch.Generator().manual_seed(3))
    seen = set()
    for i in range(x.shape[0]):  # each sample is its own flip (or none) of itself, labels alongside
        match = [
            dims
            for dims in ((), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3))
            if torch.equal(xa[i], x[i].flip(dims)) and torch.equal(ya[i], y[i].flip(dims))
        ]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 1  # not the same flip for the whole batch


def test_gamma_keeps_each_samples_range_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 6, 5, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1, 1)
    y = torch.zeros(4, 1, 6, 5, 4, dtype=torch.uint8)
    xa, _ = BatchAugment(3, **{**OFF, "p_gamma": 1.0})(x, y, torch.Generator().manual_seed(1))
    for i in range(4):  # both channels of a sample share one [min, max] rescaling
        assert xa[i].min() == pytest.approx(float(x[i].min()), abs=1e-5)
        assert xa[i].max() == pytest.approx(float(x[i].max()), abs=1e-5)
        assert torch.equal(xa[i].flatten().argsort(), x[i].flatten().argsort())
        assert not torch.allclose(xa[i], x[i])


def test_window_dims_from_volume_axes() -> None:
    assert window_dims(None, 3) == (0, 1, 2) and window_dims(None, 2) == (0, 1)
    assert window_dims([2, 0], 3) == (0, 2)
    assert window_dims([0, 2], 2, slice_axis=2) == (0,)  # the slice axis has no 2D counterpart
    assert window_dims([2], 2, slice_axis=0) == (1,)  # a 2D window over axes (1, 2)
    for bad in ([3], [0, 0], [-1]):
        with pytest.raises(ValueError, match="train.flip_axes: must be distinct volume axes"):
            window_dims(bad, 3, name="train.flip_axes")


def test_image_and_label_move_together_and_labels_stay_labels() -> None:
    x = torch.zeros(4, 1, 24, 24)
    x[:, :, 6:14, 8:18] = 1.0
    y = (x > 0.5).to(torch.uint8)
    aug = BatchAugment(2, **{**OFF, "p_affine": 1.0, "p_flip": 0.5})
    xa, ya = aug(x, y, torch.Generator().manual_seed(3))
    assert set(ya.unique().tolist()) <= {0, 1}
    agree = ((xa > 0.5) == (ya > 0)).float().mean()
    assert agree > 0.97
    assert not torch.equal(ya, y)


def test_deterministic_under_seed() -> None:
    x, y = _batch(3)
    aug = BatchAugment(3, p_affine=1.0, p_noise=1.0, p_gamma=1.0)
    a = aug(x, y, torch.Generator().manual_seed(7))
    b = aug(x, y, torch.Generator().manual_seed(7))
    c = aug(x, y, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.isfinite(a[0]).all()
