"""Embedded synthetic default dataset (Medical Segmentation Decathlon layout).

``make_synthetic_dataset`` writes a small, deterministic MR-like dataset that the
pipeline uses when the user supplies no data. Each case is drawn by
:func:`pipeline.core.synthetic_case.make_synthetic_case` (body, organ, lesion, distractors,
bias field, noise) and then stored:

* with a random per-case gain/offset (scanner units),
* in a mix of storage orientations (RAS, LPS, LAS and permuted axes) with random
  origins. Every case is built in a canonical RAS voxel grid; flips/permutations are
  applied to the array and folded into the affine, so world coordinates (and thus
  the anatomy after reorientation to RAS) are unchanged,
* about a third of the images as uint8 (rescaled to 0-255), the rest as
  float32; labels are uint8. sform and qform (code 1) are identical on image and
  label.

All files are written atomically (:func:`pipeline.core.io.write_bytes`), and
the gzip streams carry no timestamp, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core import io
from pipeline.core.synthetic_case import make_synthetic_case

__all__ = [
    "LABELS",
    "ORIENTATIONS",
    "make_synthetic_dataset",
]

LABELS: dict[str, str] = {"0": "background", "1": "organ", "2": "lesion"}

# Storage orientations: (axis permutation, flipped canonical axes).
# The stored array is ``np.transpose(flip(canonical, flips), perm)``.
ORIENTATIONS: dict[str, tuple[tuple[int, int, int], tuple[int, ...]]] = {
    "RAS": ((0, 1, 2), ()),
    "LPS": ((0, 1, 2), (0, 1)),
    "LAS": ((0, 1, 2), (0,)),
    # through-plane axis stored first, then R->L, then P->A: axcodes ("S", "L", "A")
    "SLA": ((2, 0, 1), (0,)),
}


def _reorient(
    data: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Flip + transpose a canonical array; return it with the world-preserving affine."""
    shape = np.array(data.shape)
    flip_mat = np.eye(4)
    for ax in flips:
        flip_mat[ax, ax] = -1.0
        flip_mat[ax, 3] = shape[ax] - 1
    out = np.flip(data, axis=flips) if flips else data
    # stored axis k is canonical (flipped) axis perm[k]
    perm_mat = np.zeros((4, 4))
    perm_mat[3, 3] = 1.0
    for k, src in enumerate(perm):
        perm_mat[src, k] = 1.0
    out = np.ascontiguousarray(np.transpose(out, perm))
    return out, affine @ flip_mat @ perm_mat


# --------------------------------------------------------------------------- writing
def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    # gzip without timestamp/filename -> byte-identical output for the same seed
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _balanced(rng: np.random.Generator, n: int, options: list) -> list:
    reps = -(-n // len(options))
    items = (options * reps)[:n]
    return [items[i] for i in rng.permutation(n)]


def _stored_case(
    rng: np.random.Generator, spacing: tuple[float, float, float], orientation: str, as_uint8: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case as stored: scanner gain and offset, uint8 or float32, reoriented (image, label, affine)."""
    img, lab, affine = make_synthetic_case(rng, spacing)
    # per-case intensity gain and offset (scanner units)
    gain = 10.0 ** rng.uniform(1.5, 3.0)
    offset = rng.uniform(-0.05, 0.3) * gain
    img = (img * gain + offset).astype(np.float32)
    if as_uint8:
        lo = float(img.min())
        hi = float(np.percentile(img, rng.uniform(99.7, 100.0)))
        img = np.clip(np.rint((img - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    perm, flips = ORIENTATIONS[orientation]
    img_s, aff_s = _reorient(img, affine, perm, flips)
    lab_s, _ = _reorient(lab, affine, perm, flips)
    return img_s, lab_s.astype(np.uint8), aff_s


def _dataset_json(n_cases: int, seed: int, spacing: tuple[float, float, float], training: list[dict]) -> bytes:
    meta = {
        "name": "SyntheticOrganLesion",
        "description": (
            "Synthetic MR-like volumes: an organ (1) with an adjacent lesion (2) inside a body "
            f"ellipsoid; anisotropic spacing {tuple(float(s) for s in spacing)} mm, mixed "
            f"orientations, bias field and noise. Generated with seed {seed}."
        ),
        "reference": "pipeline.core.synthetic.make_synthetic_dataset",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": dict(LABELS),
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    return (json.dumps(meta, indent=2) + "\n").encode()


def make_synthetic_dataset(
    root: Path,
    n_cases: int = 24,
    seed: int = 0,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
) -> Path:
    """Write a deterministic synthetic MSD-style dataset under ``root`` and return it.

    Layout: ``dataset.json``, ``imagesTr/case_XXX.nii.gz``, ``labelsTr/case_XXX.nii.gz``.
    ``spacing`` is the canonical (RAS x, y, z) voxel size in mm; stored header zooms are
    permuted accordingly for cases with permuted axes.
    """
    if n_cases < 1:
        raise ValueError("n_cases must be >= 1")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)

    plan_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    case_seqs = np.random.SeedSequence(seed, spawn_key=(1,)).spawn(n_cases)
    orients = _balanced(plan_rng, n_cases, list(ORIENTATIONS))
    n_u8 = round(n_cases / 3)
    as_uint8 = _balanced(plan_rng, n_cases, [True] * n_u8 + [False] * (n_cases - n_u8))

    training = []
    for i in range(n_cases):
        img, lab, affine = _stored_case(np.random.default_rng(case_seqs[i]), spacing, orients[i], as_uint8[i])
        name = f"case_{i:03d}.nii.gz"
        io.write_bytes(root / "imagesTr" / name, _nifti_bytes(img, affine))
        io.write_bytes(root / "labelsTr" / name, _nifti_bytes(lab, affine))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    io.write_bytes(root / "dataset.json", _dataset_json(n_cases, seed, spacing, training))
    return root
