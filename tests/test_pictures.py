"""2D pictures brought to one size when their structures grow with them (pipeline.preprocessing.pictures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import from_dict
from pipeline.core.dataset import read_dataset
from pipeline.core.geometry import native_mapping, resample_to_native
from pipeline.core.labels import resolve_labels
from pipeline.preprocessing.fingerprint import fingerprint_dataset
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.planner import make_plan
from pipeline.preprocessing.transforms import preprocessing

SIZES = (60, 90, 120, 200, 150, 80)


def _pictures(root: Path, grows: bool, sizes: tuple[int, ...] = SIZES) -> Path:
    """Six grey PNG pictures of different sizes with an ellipse (0/255 mask) a fixed share of the picture, or of
    a fixed size in pixels."""
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for i, n in enumerate(sizes):
        yy, xx = np.mgrid[:n, : int(n * 1.1)]
        r = n / 5 if grows else 10
        label = (((yy - n / 2) / r) ** 2 + ((xx - n * 0.55) / (0.8 * r)) ** 2 < 1).astype(np.uint8)
        image = np.random.default_rng(i).normal(100, 10, label.shape) + 60 * label
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"p{i}.png")
        Image.fromarray(label * 255).save(root / "labels" / f"p{i}.png")
    return root


def _plan(root: Path, params: dict | None = None) -> tuple[Plan, object]:
    cfg = from_dict({"preprocess": {"workers": 1, **(params or {})}})
    info, problems = resolve_labels(read_dataset(root, "auto"))
    assert not problems
    fingerprints, samples = fingerprint_dataset(info, 1, 1000)
    return make_plan(info, fingerprints, samples, cfg.preprocess, cfg), info


def test_pictures_whose_structures_grow_with_them_are_brought_to_one_size_and_back(tmp_path: Path) -> None:
    plan, info = _plan(_pictures(tmp_path / "grows", grows=True))
    entry = plan.settings["picture_scale"]
    assert entry["value"] is True and entry["source"] == "planned" and "grow with the picture" in entry["reason"]
    assert plan.picture_reference == (115, 105, 1)  # the median picture (width x height as stored, one slice)
    assert Plan.from_dict(plan.to_dict()) == plan
    chain = preprocessing(**plan.transform_kwargs())
    shapes = set()
    for case in info.cases:
        out = chain({"image": str(case.images[0]), "label": str(case.label)})
        shapes.add(tuple(out["image"].shape[1:3]))
        label = out["label"][0].long()
        probs = torch.stack([(label == k).float() for k in range(2)])
        native, _ = resample_to_native(probs, native_mapping(out["label"]))
        reference = np.asarray(Image.open(case.label)).T[..., None] > 0  # stored (x, y, 1) as the reader reads it
        assert native.shape == reference.shape  # back on the picture's own pixels
        dice = 2 * np.sum((native > 0) & reference) / (np.sum(native > 0) + np.sum(reference))
        assert dice > 0.95, (case.case_id, dice)
    assert max(s[0] for s in shapes) - min(s[0] for s in shapes) <= 2  # one size (rounding aside)


def test_pictures_of_fixed_structures_or_one_size_keep_their_pixels_unless_set(tmp_path: Path) -> None:
    fixed, _ = _plan(_pictures(tmp_path / "fixed", grows=False))
    assert fixed.picture_reference is None and fixed.settings["picture_scale"]["value"] is False
    assert "keep their size in pixels" in fixed.settings["picture_scale"]["reason"]
    assert "picture_reference" not in fixed.transform_kwargs()  # the volumes' hash is the one it always was
    forced, _ = _plan(tmp_path / "fixed", {"picture_scale": True})
    assert forced.picture_reference == (115, 105, 1)
    assert forced.settings["picture_scale"] == {"value": True, "source": "overridden", "reason": "set in the config"}
    same, _ = _plan(_pictures(tmp_path / "same", grows=True, sizes=(100, 100, 100)))
    assert same.picture_reference is None and "about one size" in same.settings["picture_scale"]["reason"]
