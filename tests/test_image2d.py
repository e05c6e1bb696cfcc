"""2D images (PNG, JPEG, TIFF, BMP, GIF) read as one-slice volumes; masks written back as PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.image2d import is_image2d, match_channels, read_array_2d, write_mask_2d
from pipeline.core.readers import ReadError


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_is_x_y_one_slice_channels_last(tmp_path):
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    data, header = read_array_2d(tmp_path / "a.png")
    assert data.shape == (30, 20, 1, 3) and header.shape == data.shape
    assert data[7, 3, 0, 1] == pixels[3, 7, 1]  # x = column, y = row
    assert header.physical_spacing is False and header.spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(header.affine, np.eye(4))


def test_rgba_drops_alpha_and_grey_rgb_is_one_channel(tmp_path):
    pixels = _rgb()
    rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    data, _ = read_array_2d(tmp_path / "a.png")
    assert data.shape == (30, 20, 1, 3) and np.array_equal(data[:, :, 0].transpose(1, 0, 2), pixels)
    grey = np.repeat(pixels[..., :1], 3, axis=-1)
    Image.fromarray(grey).save(tmp_path / "g.bmp")
    data, _ = read_array_2d(tmp_path / "g.bmp")
    assert data.shape == (30, 20, 1) and np.array_equal(data[:, :, 0].T, pixels[..., 0])


def test_gif_mask_keeps_its_0_255_values(tmp_path):
    mask = np.zeros((16, 24), np.uint8)
    mask[4:9, 5:20] = 255
    Image.fromarray(mask).save(tmp_path / "m.gif")
    data, header = read_array_2d(tmp_path / "m.gif")
    assert data.shape == (24, 16, 1)
    assert set(np.unique(data)) == {0, 255} and np.array_equal(data[:, :, 0].T, mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_grey_keeps_its_type(tmp_path, dtype):
    import tifffile

    pixels = (np.arange(12 * 10).reshape(12, 10) * 300).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    data, header = read_array_2d(tmp_path / "a.tif")
    assert data.dtype == np.dtype(dtype) and header.dtype == str(np.dtype(dtype))
    assert data.shape == (10, 12, 1) and np.array_equal(data[:, :, 0].T, pixels)


def test_tiff_rgb16(tmp_path):
    import tifffile

    pixels = (np.random.default_rng(1).integers(0, 65535, (8, 9, 3))).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tiff", pixels, photometric="rgb")
    data, _ = read_array_2d(tmp_path / "a.tiff")
    assert data.shape == (9, 8, 1, 3) and data.dtype == np.uint16
    assert np.array_equal(data[:, :, 0].transpose(1, 0, 2), pixels)


def test_16bit_png_kept(tmp_path):
    pixels = (np.arange(6 * 5).reshape(6, 5) * 2000).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    data, _ = read_array_2d(tmp_path / "a.png")
    assert data.dtype.kind in "ui" and data.dtype.itemsize >= 2 and int(data.max()) == int(pixels.max())


def test_bad_files_are_one_line_read_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(_rgb()).save(tmp_path / "ok.png")
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    for name in ("empty.png", "junk.jpg", "cut.png", "missing.png"):
        with pytest.raises(ReadError) as err:
            read_array_2d(tmp_path / name)
        assert "\n" not in str(err.value)


def test_match_channels():
    grey = np.arange(6, dtype=np.float32).reshape(1, 3, 2, 1)
    assert np.array_equal(match_channels(grey, 3), np.repeat(grey, 3, axis=0))
    colour = np.stack([np.full((3, 2, 1), v, np.float32) for v in (100, 50, 10)])
    expected = 0.299 * 100 + 0.587 * 50 + 0.114 * 10
    assert np.allclose(match_channels(colour, 1), expected)
    with pytest.raises(ValueError, match="2 channel"):
        match_channels(np.zeros((2, 3, 2, 1)), 3)


def test_write_mask_2d_round_trip(tmp_path):
    labels = np.zeros((30, 20, 1), np.uint8)
    labels[3:9, 4:12] = 255
    write_mask_2d(labels, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as img:
        assert img.size == (30, 20)  # width, height: the image's own size
    back, _ = read_array_2d(tmp_path / "p.png")
    assert np.array_equal(back, labels)
    assert is_image2d("x.JPEG") and is_image2d("y.tif") and not is_image2d("z.nii.gz")
