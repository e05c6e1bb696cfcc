"""Predicted masks written as the data came: 2D pictures as PNG of their own size with the declared values."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import PreprocessConfig
from pipeline.core.cases import Case
from pipeline.core.dataset import read_dataset, read_folder
from pipeline.core.labels import resolve_labels
from pipeline.core.validation import validate_dataset
from pipeline.inference.masks import mask_name, save_mask
from pipeline.inference.predictor import Predictor
from pipeline.preprocessing.preprocessor import plan_dataset, preprocess_dataset


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
        picture = Image.fromarray(rgb)
        (picture.convert("L") if i == n - 1 else picture).save(root / "images" / f"photo{i}.png")  # one grey
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "labels" / f"photo{i}.gif")
    return root


def test_mask_names_follow_the_image_kind():
    assert mask_name("a", "x/a.jpeg") == "a.png" and mask_name("b", "x/b.nii.gz") == "b.nii.gz"


def test_rgb_png_with_0_255_gif_masks_is_read_trained_ready_and_predicted_back_as_png(tmp_path):
    root = photo_dataset(tmp_path / "photos")
    info, problems = resolve_labels(read_folder(root))
    assert problems == [] and info.label_values == (0, 255) and info.labels == {0: "background", 1: "foreground"}
    assert validate_dataset(info, progress=False) == []

    cfg = PreprocessConfig(out_dir=str(tmp_path / "pre"), workers=1, target_spacing=None)
    plan, fingerprints = plan_dataset(info, cfg)
    assert plan.label_values == (0, 255) and len(plan.intensity) == 3
    preprocess_dataset(info, plan, cfg.out_dir, fingerprints, workers=1)
    image = np.load(tmp_path / "pre" / "images" / "photo0.npy")
    label = np.load(tmp_path / "pre" / "labels" / "photo0.npy")
    assert image.shape[0] == 3 and image.shape[-1] == 1  # three colour channels, one slice
    assert set(np.unique(label)) == {0, 1}  # 255 became class 1

    meta = {
        "model": {"name": "bright"},
        "spatial_dims": 2,
        "in_channels": 3,
        "num_classes": 2,
        "labels": {"0": "background", "1": "foreground"},
        "plan": plan.to_dict(),
        "patch_size": [32, 32],
        "slice_axis": 2,
        "inference": {"overlap": 0.25, "sw_batch_size": 4, "blend": "gaussian", "mirror_tta": False},
    }
    predictor = Predictor(model=Bright(), meta=meta, device="cpu")
    case = info.cases[0]
    pred = predictor.predict(case)
    out = save_mask(pred.labels, pred.reference, case.images[0], tmp_path / "out", case.case_id, plan.label_values)
    assert out.name == "photo0.png"
    with Image.open(out) as img, Image.open(case.images[0]) as src:
        assert img.size == src.size and img.mode == "L"
        written = np.asarray(img)
    assert set(np.unique(written)) == {0, 255}
    truth = np.asarray(Image.open(case.label)) > 0
    assert (written > 0)[truth].mean() > 0.9 and (written > 0)[~truth].mean() < 0.1
    grey = info.cases[-1]  # a grey picture in a colour dataset becomes RGB for the model
    assert predictor.predict(grey).labels.shape == np.asarray(Image.open(grey.images[0])).T.shape + (1,)


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
