"""Predicted masks written as the data came: 2D pictures as PNG of their own size with the declared values."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.dataset import Case, read_dataset
from pipeline.core.validation import validate_dataset
from pipeline.inference.masks import mask_name, save_mask


class Bright(torch.nn.Module):
    """Deterministic 'network': foreground where the first (normalised) channel is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), 20 * (x[:, :1] - 0.5)], dim=1)


def photo_dataset(root: Path, n: int = 3, size: tuple[int, int] = (37, 29)) -> Path:
    """RGB PNG photographs (width x height ``size``) with 0/255 GIF masks of a bright disc; no dataset.json."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        disc = (xx - w / 2 - i) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 4) ** 2
        rgb = np.random.default_rng(i).integers(0, 60, (h, w, 3)).astype(np.uint8)
        rgb[disc] += np.array([150, 120, 90], np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "images" / f"photo{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "labels" / f"photo{i}.gif")
    return root


def test_mask_names_follow_the_image_kind():
    assert mask_name("a", "x/a.jpeg") == "a.png" and mask_name("b", "x/b.nii.gz") == "b.nii.gz"


def test_brats_like_labels_are_written_back_with_their_declared_values(tmp_path):
    classes = np.zeros((6, 5, 4), np.uint8)
    classes[1, 1, 1], classes[2, 2, 2], classes[3, 3, 3] = 1, 2, 3
    ref = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    out = save_mask(classes, ref, tmp_path / "p1_0000.nii.gz", tmp_path, "p1", (0, 1, 2, 4))
    back = nib.load(str(out))
    assert out.name == "p1.nii.gz" and np.allclose(back.affine, ref.affine)
    assert sorted(np.unique(np.asarray(back.dataobj)).tolist()) == [0, 1, 2, 4]


@pytest.mark.parametrize("layout", ["msd", "folder"])
def test_per_channel_brats_like_cases_read_as_one_multichannel_case(tmp_path, layout):
    root = tmp_path / layout
    for ch in (0, 1):
        data = np.full((6, 5, 4), ch + 1, np.float32)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(root / "imagesTr" / f"p1_{ch:04d}.nii.gz"))
    label = np.zeros((6, 5, 4), np.float32)
    label[1:3, 1:3, 1:3] = 4.0
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / "p1.nii.gz"))
    labels = {"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"}
    entry = {"image": ["imagesTr/p1_0000.nii.gz", "imagesTr/p1_0001.nii.gz"], "label": "labelsTr/p1.nii.gz"}
    meta = {"labels": labels, "modality": {"0": "FLAIR", "1": "T1c"}}
    (root / "dataset.json").write_text(json.dumps({**meta, "training": [entry]} if layout == "msd" else meta))
    info = read_dataset(root, layout)
    assert info.cases == (
        Case("p1", (root / "imagesTr" / "p1_0000.nii.gz", root / "imagesTr" / "p1_0001.nii.gz"), info.cases[0].label),
    )
    assert info.label_values == (0, 1, 2, 4) and validate_dataset(info, progress=False) == []
