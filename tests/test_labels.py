"""Declared label values <-> classes 0..K-1."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.labels import declared_labels, inferred_labels, is_identity, to_classes, to_values


def test_brats_like_float_labels_round_trip_to_declared_values():
    classes, values = declared_labels({0: "bg", 1: "necrosis", 2: "edema", 4: "enhancing"})
    assert classes == {0: "bg", 1: "necrosis", 2: "edema", 3: "enhancing"} and values == (0, 1, 2, 4)
    stored = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)  # float-stored integers
    as_classes = to_classes(stored, values)
    assert as_classes.tolist() == [[0, 1], [2, 3]]
    back = to_values(as_classes, values)
    assert back.dtype == np.uint8 and back.tolist() == [[0, 1], [2, 4]]


def test_binary_0_255_and_identity():
    classes, values = declared_labels({0: "background", 255: "vessel"})
    assert classes == {0: "background", 1: "vessel"} and values == (0, 255)
    assert to_classes(np.array([0, 255, 255]), values).tolist() == [0, 1, 1]
    assert to_values(np.array([1, 0]), values).tolist() == [255, 0]
    assert declared_labels({0: "bg", 1: "a", 2: "b"})[1] == ()  # 0..K-1: nothing to map
    assert is_identity(()) and is_identity((0, 1, 2)) and not is_identity((0, 2))
    assert to_values(np.array([0, 2]), ()).tolist() == [0, 2]
    assert inferred_labels([255, 0]) == {0: "background", 255: "foreground"}
    assert inferred_labels([0, 1, 2]) == {0: "background", 1: "label 1", 2: "label 2"}


def test_preprocessing_chain_maps_label_values_to_classes(tmp_path):
    from pipeline.preprocessing.transforms import preprocessing

    image = np.random.default_rng(0).random((12, 10, 6)).astype(np.float32) + 1
    label = np.zeros((12, 10, 6), np.uint8)
    label[3:8, 2:6, 1:4] = 255
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "i.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "l.nii.gz"))
    chain = preprocessing((1.0, 1.0, 1.0), crop_foreground=False, label_values=(0, 255))
    out = chain({"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")})
    assert set(np.unique(out["label"].numpy())) == {0.0, 1.0}
    assert int(out["label"].numpy().sum()) == int((label == 255).sum())


def _disc(shape: tuple[int, int] = (96, 120)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - 40) ** 2 + (xx - 62) ** 2 < 26**2) | ((yy - 70) ** 2 + (xx - 20) ** 2 < 9**2)


def test_nearest_values_ties_go_to_the_lower_value():
    from pipeline.core.labels import nearest_values

    data = np.array([-3, 0, 10, 127, 127.5, 128, 200, 300])
    assert nearest_values(data, (255, 0)).tolist() == [0, 0, 0, 0, 0, 255, 255, 255]
    assert nearest_values(np.array([0.4, 0.5, 1.6, 3.9]), (0, 1, 2, 4)).tolist() == [0, 0, 2, 4]


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_mask_is_read_as_label_values_and_a_png_mask_as_stored(tmp_path, mode):
    """A 0/255 mask saved as JPEG (grey or colour, as Kvasir-SEG ships its masks) has compression noise at every
    edge; it is read back as 0/255 (undeclared: binary), within a pixel of the edges of the mask it encodes."""
    from PIL import Image

    from pipeline.core.labels import read_label
    from pipeline.core.readers import read_array

    mask = _disc().astype(np.uint8) * 255
    Image.fromarray(mask).convert(mode).save(tmp_path / "m.jpg", quality=75)
    raw, _ = read_array(tmp_path / "m.jpg")
    assert len(np.unique(raw)) > 2  # what the file holds: more than two values
    data, header = read_label(tmp_path / "m.jpg")
    assert data.shape == header.shape == (120, 96, 1) and data.dtype == np.uint8
    assert set(np.unique(data).tolist()) == {0, 255}
    assert np.mean(data[:, :, 0].T != mask) < 0.005
    declared, _ = read_label(tmp_path / "m.jpg", (0, 128, 255))  # with declared values: the nearest of them
    assert set(np.unique(declared).tolist()) <= {0, 128, 255} and np.mean(declared[:, :, 0].T != mask) < 0.005
    Image.fromarray(mask // 255 * 7).save(tmp_path / "m.png")  # lossless: as stored, whatever the values given
    assert np.array_equal(read_label(tmp_path / "m.png", (0, 255))[0], read_array(tmp_path / "m.png")[0])


def test_a_folder_with_jpeg_masks_validates_and_preprocesses_to_two_classes(tmp_path, caplog):
    """A paired folder of JPEG photographs with JPEG masks and no dataset.json: one warning, labels 0/255
    (not the ~30 values compression leaves), and the preprocessing chain gives classes 0/1."""
    from PIL import Image

    from pipeline.core.dataset import read_dataset
    from pipeline.core.labels import resolve_labels
    from pipeline.core.validation import check_case
    from pipeline.preprocessing.transforms import preprocessing

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    masks = []
    for i in range(6):
        mask = np.roll(_disc(), 7 * i, axis=1)
        photo = np.stack([mask * 90 + 60, mask * 40 + 80, np.full(mask.shape, 90)], -1) + rng.normal(
            0, 8, (*mask.shape, 3)
        )
        Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(tmp_path / "images" / f"p{i}.jpg", quality=85)
        Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "masks" / f"p{i}.jpg", quality=70)
        masks.append(mask)
    with caplog.at_level("WARNING", logger="pipeline.core.labels"):
        info, problems = resolve_labels(read_dataset(tmp_path, "auto"))
    assert not problems and info.label_values == (0, 255) and len(info.labels) == 2
    assert "6 mask(s) stored as JPEG" in caplog.text
    assert all(check_case(c, {0: "background", 255: "foreground"}, "found") == [] for c in info.cases)
    chain = preprocessing((1.0, 1.0, -1.0), crop_foreground=False, label_values=(0, 255), num_classes=2)
    out = chain({"image": str(info.cases[0].images[0]), "label": str(info.cases[0].label)})
    label = out["label"].numpy()[0, :, :, 0].T
    assert set(np.unique(label).tolist()) == {0.0, 1.0}
    assert np.mean(label != masks[0]) < 0.005


def test_a_colour_palette_mask_gives_its_classes_and_a_grey_palette_its_grey_levels(tmp_path):
    """A PNG label mask as PASCAL VOC stores it (palette indices = classes, shown in colours) is read as the
    indices, by every label reader, validation included; a GIF mask with a grey palette (DRIVE's) keeps 0/255."""
    from PIL import Image

    from pipeline.core.cases import Case
    from pipeline.core.labels import read_label
    from pipeline.core.readers import read_array
    from pipeline.core.validation import check_case

    classes = np.zeros((20, 30), np.uint8)
    classes[2:8, 3:9], classes[10:15, 10:20] = 1, 2
    voc = Image.fromarray(classes, mode="P")
    voc.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 3 * 253)
    voc.save(tmp_path / "voc.png")
    assert read_array(tmp_path / "voc.png")[0].shape == (30, 20, 1, 3)  # as a picture: its colours
    data, header = read_label(tmp_path / "voc.png")
    assert np.array_equal(data[:, :, 0].T, classes) and header.shape == (30, 20, 1)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "image.png")
    assert check_case(Case("c", (tmp_path / "image.png",), tmp_path / "voc.png"), {0: "bg", 1: "a", 2: "b"}) == []
    Image.fromarray(classes.astype(bool).astype(np.uint8) * 255).convert("P").save(tmp_path / "grey.gif")
    assert set(np.unique(read_label(tmp_path / "grey.gif")[0]).tolist()) == {0, 255}
    voc.convert("RGB").save(tmp_path / "rgb.png")  # the same colours without a palette: no classes to read
    (problem,) = check_case(Case("c", (tmp_path / "image.png",), tmp_path / "rgb.png"), {0: "bg", 1: "a", 2: "b"})
    assert problem.problem.startswith("a colour mask (3 channels that differ)")
