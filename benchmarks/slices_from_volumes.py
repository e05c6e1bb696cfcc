"""Write the BraTS examples of ../shared/data as a folder of per-patient 2D MRI slices, as kaggle_3m comes.

The six labelled glioma MRIs of ``../shared/data/brats2015_examples`` (four training, two test cases) become
``<out>/kaggle_3m/<patient>/<patient>_<n>.tif``: 240x240 RGB TIFF axial slices (T1c, FLAIR, T1c; each
channel scaled to 0-255 between its 0.5th and 99.5th percentile inside the brain, 0 outside), beside
``<patient>_<n>_mask.tif`` masks of the whole tumour (labels > 0) stored as 0/255, one slice per brain
slice. It checks the pipeline on the kind of data of the LGG FLAIR-abnormality set (3-channel TIFF slices,
a folder per patient, scored per patient) that is not in ../shared/data; see the README's table.

    python benchmarks/slices_from_volumes.py /tmp/brats_slices
    dvc exp run -S "configs/params.yaml:data.root=/tmp/brats_slices" -S configs/params.yaml:train.target_minutes=15
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2015_examples"


def to_uint8(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """0-255 between the 0.5th and 99.5th percentile inside the brain, 0 outside."""
    lo, hi = np.percentile(volume[brain], [0.5, 99.5])
    return (np.clip((volume - lo) / (hi - lo), 0, 1) * 255 * brain).astype(np.uint8)


def write_patient(source: Path, split: str, case: str, out: Path) -> tuple[str, int, int]:
    """One patient's slices and masks; returns (patient, slices, slices with tumour)."""
    flair = nib.load(source / f"images{split}" / f"{case}_0000.nii.gz").get_fdata()
    t1c = nib.load(source / f"images{split}" / f"{case}_0001.nii.gz").get_fdata()
    tumour = nib.load(source / f"labels{split}" / f"{case}.nii.gz").get_fdata() > 0
    brain = nib.load(source / f"masks{split}" / f"{case}.nii.gz").get_fdata() > 0.5
    f8, t8 = to_uint8(flair, brain), to_uint8(t1c, brain)
    patient = f"TCGA_{case.split('_')[2].upper()}_2013"
    folder = out / "kaggle_3m" / patient
    folder.mkdir(parents=True, exist_ok=True)
    n = with_tumour = 0
    for z in range(tumour.shape[2]):
        if brain[:, :, z].sum() < 500:  # slices above or below the brain
            continue
        n += 1
        with_tumour += int(tumour[:, :, z].any())
        Image.fromarray(np.stack([t8[:, :, z], f8[:, :, z], t8[:, :, z]], -1)).save(folder / f"{patient}_{n}.tif")
        Image.fromarray((tumour[:, :, z] * 255).astype(np.uint8)).save(folder / f"{patient}_{n}_mask.tif")
    return patient, n, with_tumour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (outside the repository)")
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    for split in ("Tr", "Ts"):
        for label in sorted((args.source / f"labels{split}").glob("*.nii.gz")):
            patient, n, with_tumour = write_patient(args.source, split, label.name[: -len(".nii.gz")], args.out)
            print(f"{patient}: {n} slices, {with_tumour} with tumour")


if __name__ == "__main__":
    main()
