"""Declared label values <-> classes 0..K-1."""

from __future__ import annotations

import nibabel as nib
import numpy as np

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
