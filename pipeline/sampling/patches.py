"""Training batches of random patches, drawn a whole batch at a time.

Each item of :class:`PatchBatches` is one batch: for every sample a case (with replacement), a class
by the configured ratios (when the case holds no voxel of a drawn foreground class, the sample goes to
a case that does: with one picture per case, as a folder of MRI slices where most slices show no
tumour, the ratio stays the share of samples that show each class, as it does when nnU-Net draws
slices from whole volumes), a crop centre among that class's stored locations, then a crop of the
patch size that stays inside the volume (where the volume is smaller than the patch along an axis,
that whole axis), placed in the middle of a zero patch. These are the windows of MONAI's
``RandCropByLabelClassesd(allow_smaller=True)`` followed by ``SpatialPadd`` (the crop comes first:
padding the volume first would change its shape and send the stored flat indices to the wrong
voxels), done with array slicing into one preallocated batch. On the volumes of
benchmarks/bench_training.py, per-sample MONAI transforms took 8 ms per 2D batch of 32 patches here,
14% of the network's step; this takes 1 ms (throughput figures in benchmarks/README.md).

A batch depends only on ``(seed, batch index)``, not on the number of loader workers, so a resumed or
re-run epoch draws exactly the same patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def class_ratios(num_classes: int, foreground_ratio: float) -> list[float]:
    """Crop-centre ratios: background gets ``1 - foreground_ratio``, the rest is split evenly."""
    fg = foreground_ratio / (num_classes - 1)
    return [1.0 - foreground_ratio] + [fg] * (num_classes - 1)


def _class_of(cdf: np.ndarray, draw: float) -> int:
    """The class a uniform ``draw`` in [0, 1) picks from cumulative class probabilities ``cdf``."""
    return min(int(np.searchsorted(cdf, draw, side="right")), len(cdf) - 1)


def crop_slices(center: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The window of ``size`` around ``center``, shifted to lie inside ``shape`` (clipped where larger).

    Same windows as MONAI's ``correct_crop_centers(allow_smaller=True)`` + ``SpatialCrop``.
    """
    out = []
    for c, s, n in zip(center, size, shape, strict=True):
        s = min(s, n)
        lo, hi = s // 2, max(int(n + 1 - s / 2), s // 2 + 1)  # valid centres: lo .. hi - 1
        start = min(max(int(c), lo), hi - 1) - s // 2
        out.append(slice(start, start + s))
    return tuple(out)


def pad_widths(shape: Sequence[int], size: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric zero-padding of ``shape`` up to ``size`` (extra voxel after), as ``SpatialPadd``."""
    return [(max(s - n, 0) // 2, max(s - n, 0) - max(s - n, 0) // 2) for n, s in zip(shape, size, strict=True)]


class PatchBatches(Dataset):
    """``n_batches`` batches of ``batch_size`` patches from ``volumes``.

    ``volumes``: dicts with ``image`` (C, X, Y, Z), ``label`` (1, X, Y, Z) arrays (in memory or
    memory-mapped) and ``locations`` (per class, flat indices into the volume). ``patch_size`` has
    three entries, or two with ``slice_axis`` set (2D: one slice along that axis). Items are dicts
    of tensors: ``image`` (B, C, *patch) float32 and ``label`` (B, 1, *patch) int64.
    """

    def __init__(
        self,
        volumes: Sequence[dict],
        patch_size: Sequence[int],
        ratios: Sequence[float],
        batch_size: int,
        n_batches: int,
        seed: int,
        slice_axis: int | None = None,
    ) -> None:
        self.volumes = volumes
        self.size = [int(s) for s in patch_size]
        if slice_axis is not None:
            self.size.insert(slice_axis, 1)
        if len(self.size) != 3:
            raise ValueError(f"patch size {list(patch_size)} does not fit slice_axis {slice_axis}")
        self.ratios = np.asarray(ratios, dtype=float)
        self.batch_size, self.n_batches, self.seed = batch_size, n_batches, seed
        self.slice_axis = slice_axis
        self._cdfs = [self._class_cdf(v) for v in volumes]
        self._ratio_cdf = np.cumsum(self.ratios) / self.ratios.sum()
        # per class, the cases holding at least one voxel of it
        self._holders = [np.flatnonzero([len(v["locations"][c]) > 0 for v in volumes]) for c in range(len(self.ratios))]

    def __len__(self) -> int:
        return self.n_batches

    def _class_cdf(self, vol: dict) -> np.ndarray | None:
        """Cumulative class probabilities for one volume (classes it has no location of get 0)."""
        p = np.where([len(loc) > 0 for loc in vol["locations"]], self.ratios, 0.0)
        return np.cumsum(p) / p.sum() if p.sum() > 0 else None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n_batches:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        picks = rng.integers(0, len(self.volumes), size=self.batch_size)
        draws = rng.random(self.batch_size)
        channels = self.volumes[0]["image"].shape[0]
        image = np.zeros((self.batch_size, channels, *self.size), np.float32)
        label = np.zeros((self.batch_size, 1, *self.size), np.int64)
        for b, i in enumerate(picks):
            cls = _class_of(self._ratio_cdf, draws[b])
            if cls > 0 and len(self.volumes[i]["locations"][cls]) == 0 and len(self._holders[cls]):
                i = int(self._holders[cls][rng.integers(len(self._holders[cls]))])
            vol = self.volumes[i]
            shape = vol["label"].shape[1:]
            cdf = self._cdfs[i]
            if cdf is not None:
                if len(vol["locations"][cls]) == 0:  # not held here: by the ratios of the classes the case holds
                    cls = _class_of(cdf, draws[b])
                loc = vol["locations"][cls]
                center = np.unravel_index(int(loc[rng.integers(len(loc))]), shape)
            else:  # no class with a positive ratio in this case: a uniformly random centre (as nnU-Net)
                center = tuple(int(rng.integers(n)) for n in shape)
            src = crop_slices(center, self.size, shape)
            widths = [w.stop - w.start for w in src]
            dst = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad_widths(widths, self.size), widths, strict=True))
            image[(b, slice(None), *dst)] = vol["image"][(slice(None), *src)]
            label[(b, slice(None), *dst)] = vol["label"][(slice(None), *src)]
        if self.slice_axis is not None:
            image, label = image.squeeze(self.slice_axis + 2), label.squeeze(self.slice_axis + 2)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
