"""Network topology, patch and batch for one configuration (2D or 3D), planned from spacing and shape.

The rules follow the published nnU-Net planning (Isensee et al. 2021), written anew for DynUNet-like
networks whose strides and kernels are set per level and axis:

* **pooling per axis** (:func:`plan_topology`): level by level, an axis is halved only while its
  current spacing is less than twice the finest current spacing and it keeps at least ``2 * MIN_AXIS``
  voxels (so the bottleneck keeps ``MIN_AXIS``). A slow axis of anisotropic data is therefore not pooled
  until the other axes, pooled, have become as coarse as it is.
* **kernel sizes**: 3 along an axis from the first level where its spacing is comparable to the finest
  (ratio < 2), 1 before that (no mixing across thick slices at full resolution).
* **patch** (:func:`fit_patch`): start from the median preprocessed shape and, while a training batch
  of ``MIN_BATCH`` does not fit the activation-memory budget, shrink the physically longest axis by one
  pooling step; every axis is a multiple of ``2 ** pools`` along it.
* **batch** (:func:`plan_batch`): the preferred CPU batch (``PREFERRED_BATCH``) when memory allows,
  never above 5% of the dataset's voxels per batch (nnU-Net's cap) and never below ``MIN_BATCH``.
* **full-resolution level**: MONAI's UNet strides its first convolution, so it decodes from half
  resolution; for structures under ``THIN_VOXELS`` (two half-resolution voxels) thick the plan adds a level
  of ``base_width // 2``
  feature maps at full resolution (``topology["full_resolution_width"]``, counted in memory and cost).
* **cost** (:func:`seconds_per_epoch`): a fixed, clock-free cost model (multiply-adds of the
  convolutions, a per-iteration overhead and a per-voxel cost of each output class), so the epoch
  count planned for a time target is the same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_AXIS = 4  # bottleneck feature maps keep at least this many voxels per pooled axis
MAX_POOLS = 5  # per axis
MIN_PATCH = 8  # smallest patch edge the planner shrinks to
MAX_WIDTH = 320  # feature maps per level are capped here (as in nnU-Net and DynUNet configurations)
BYTES_PER_VALUE = 4  # float32 activations
TENSORS_PER_LEVEL = 6  # per block: conv output, norm output, activation, for each of its two convolutions
MIN_BATCH = 2
PREFERRED_BATCH = {2: 16, 3: 4}  # CPU batches (hippocampus 3D recipe: 4; synthetic 2D default: 16)
MAX_BATCH_FRACTION = 0.05  # one batch holds at most this share of the dataset's voxels
THIN_VOXELS = 4.0  # thinner structures (2 x volume / boundary voxels) get a full-resolution level
# Cost model, calibrated on 2 CPU cores of the slower machines of this kind (training steps of the planned
# networks timed alone, median of 4, 2026-11-26: 3D 40x56x40 x4 with a full-resolution level 0.39 s,
# without 0.14 s; 3D 96^3 x2 0.83 s; 3D 80x96x96 x2 + full 2.1 s; 2D 544^2 x2 + full 0.89 s, without
# 0.48 s; 2D 832^2 x2 1.3 s; 2D 80^2 x15 + full 0.14 s; all within ~20% of the model). Estimates, not
# timings: they only have to be the same everywhere.
MULTIPLY_ADDS_PER_SECOND = {2: 1.35e10, 3: 3.0e10}  # 3D in channels-last (the default there)
# a full-resolution level: four convolutions (two down, about two up) on few maps, each ~3.5x slower per
# multiply-add than the deeper levels' convolutions
FULL_RESOLUTION_CONVS = 14
SECONDS_PER_ITERATION = 0.035
# Output classes: softmax, Dice + cross-entropy and the last convolutions at full resolution cost per voxel and
# class, beyond what the multiply-add rate holds for the calibration networks' classes (3D: 3, the hippocampus; 2D:
# up to 4, the chest X-rays). Timed alone, 2026-11-26 (benchmarks/bench_cost_model.py and its README): 3D 96^3 x2
# 1.02 s a step with 5 classes against 0.71 s with 2 (5.8e-8 s per voxel and class), 64^3 x2 4.9e-8, 40x56x40 x4
# 3e-8; 2D 448x416 x2 and 256^2 x2 with 9 classes against 2: 2e-8 and 4e-8.
CALIBRATION_CLASSES = {2: 4, 3: 3}
SECONDS_PER_VOXEL_CLASS = {2: 3e-8, 3: 5.5e-8}
SECONDS_PER_WINDOW = 0.01  # per validated volume or slice: reading, padding, blending


def plan_topology(patch: Sequence[int], spacing: Sequence[float], max_pools: int = MAX_POOLS) -> dict:
    """Strides and kernel sizes per level and axis for ``patch`` at ``spacing`` (see the module docstring).

    Returns ``{"strides": [[...] per pooling step], "kernel_sizes": [[...] per level], "pool_per_axis":
    [...], "depth": number of pooling steps}``; ``kernel_sizes`` has ``depth + 1`` entries.
    """
    size, current = [float(p) for p in patch], [float(s) for s in spacing]
    pools = [0] * len(size)
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    wide = [False] * len(size)  # axes whose kernels are already 3 wide
    while True:
        finest = min(current)
        comparable = [s / finest < 2 for s in current]
        wide = [w or c for w, c in zip(wide, comparable, strict=True)]
        kernels.append([3 if w else 1 for w in wide])
        step = [c and s >= 2 * MIN_AXIS and p < max_pools for c, s, p in zip(comparable, size, pools, strict=True)]
        if not any(step):
            break
        strides.append([2 if s else 1 for s in step])
        for i, s in enumerate(step):
            if s:
                size[i], current[i], pools[i] = size[i] / 2, current[i] * 2, pools[i] + 1
    return {"strides": strides, "kernel_sizes": kernels, "pool_per_axis": pools, "depth": len(strides)}


def widths(depth: int, base_width: int, max_width: int = MAX_WIDTH) -> list[int]:
    """Feature maps per level (``depth + 1`` levels): doubling from ``base_width``, capped."""
    return [min(base_width * 2**level, max_width) for level in range(depth + 1)]


def _level_fractions(strides: Sequence[Sequence[int]]) -> list[float]:
    """Share of the input voxels each level's feature maps hold."""
    fractions = [1.0]
    for step in strides:
        fractions.append(fractions[-1] / math.prod(step))
    return fractions


def activation_bytes_per_voxel(topology: dict, base_width: int, max_width: int = MAX_WIDTH) -> float:
    """Estimated training memory per input voxel of one sample through the U-Net of ``topology``.

    Level ``l`` has ``w_l`` feature maps on a share ``f_l`` of the voxels; each level keeps
    ``TENSORS_PER_LEVEL`` (6) such maps in the encoder and as many in the decoder, and backprop needs about
    as much again for their gradients, all float32: ``4 * 6 * 2 * 2 * sum_l w_l * f_l`` bytes. Weights,
    optimiser state and framework overhead are not included (budget them apart).
    """
    w = widths(topology["depth"], base_width, max_width)
    f = _level_fractions(topology["strides"])
    maps = sum(a * b for a, b in zip(w, f, strict=True)) + topology.get("full_resolution_width", 0)
    return BYTES_PER_VALUE * TENSORS_PER_LEVEL * 2 * 2 * maps


def multiply_adds_per_voxel(topology: dict, base_width: int, max_width: int = MAX_WIDTH) -> float:
    """Convolution multiply-adds per input voxel of one sample, forward pass, main convolutions only."""
    w = widths(topology["depth"], base_width, max_width)
    f = _level_fractions(topology["strides"])
    full = topology.get("full_resolution_width", 0)
    extra = FULL_RESOLUTION_CONVS * math.prod(topology["kernel_sizes"][0]) * full * full
    return extra + sum(math.prod(k) * c * c * frac for k, c, frac in zip(topology["kernel_sizes"], w, f, strict=True))


def seconds_per_epoch(
    topology: dict, patch: Sequence[int], batch: int, iterations: int, base_width: int, classes: int = 2
) -> float:
    """Estimated seconds of one training epoch on the reference machine (2 CPU cores); clock-free.

    ``classes``: output classes, background included (beyond ``CALIBRATION_CLASSES`` each adds a cost per voxel).
    """
    dims, voxels = len(patch), batch * math.prod(patch)
    work = voxels * multiply_adds_per_voxel(topology, base_width)
    outputs = voxels * max(0, classes - CALIBRATION_CLASSES[dims]) * SECONDS_PER_VOXEL_CLASS[dims]
    return iterations * (SECONDS_PER_ITERATION + work / MULTIPLY_ADDS_PER_SECOND[dims] + outputs)


def validation_seconds(
    topology: dict,
    patch: Sequence[int],
    shape: Sequence[float],
    slices: float,
    cases: int,
    overlap: float,
    base_width: int,
) -> float:
    """Estimated seconds of one validation (sliding windows of ``patch`` with ``overlap`` over ``cases`` volumes
    of ``shape``, ``slices`` 2D slices each; forward passes only, a third of a training step's work)."""
    step = [max(1.0, p * (1 - overlap)) for p in patch]
    windows = math.prod(max(1, math.ceil((s - p) / st) + 1) for s, p, st in zip(shape, patch, step, strict=True))
    work = cases * slices * windows * math.prod(patch) * multiply_adds_per_voxel(topology, base_width)
    return cases * slices * SECONDS_PER_WINDOW + work / 3 / MULTIPLY_ADDS_PER_SECOND[len(patch)]


def _divisible(patch: Sequence[int], spacing: Sequence[float]) -> tuple[list[int], dict]:
    """Round every axis up to a multiple of ``2 ** pools`` along it (pools recomputed after rounding)."""
    patch = list(patch)
    for _ in range(3):
        topo = plan_topology(patch, spacing)
        rounded = [math.ceil(p / 2**k) * 2**k for p, k in zip(patch, topo["pool_per_axis"], strict=True)]
        if rounded == patch:
            break
        patch = rounded
    return patch, plan_topology(patch, spacing)


def fit_patch(
    median_shape: Sequence[float],
    spacing: Sequence[float],
    budget_gb: float,
    base_width: int,
    batch: int = MIN_BATCH,
    full_width: int = 0,
) -> tuple[list[int], dict, float]:
    """Largest patch, from the median shape down, whose batch of ``batch`` fits ``budget_gb``.

    ``full_width``: feature maps of a full-resolution level (0: none), kept in the returned topology.

    Returns the patch, its topology and the estimated memory (GB) of a batch of ``batch``.
    """
    budget = budget_gb * 2**30
    patch = [max(MIN_PATCH, int(round(s))) for s in median_shape]
    while True:
        patch, topo = _divisible(patch, spacing)
        topo["full_resolution_width"] = full_width
        need = math.prod(patch) * activation_bytes_per_voxel(topo, base_width) * batch
        shrinkable = [i for i, p in enumerate(patch) if p > MIN_PATCH]
        if need <= budget or not shrinkable:
            return patch, topo, need / 2**30
        axis = max(shrinkable, key=lambda i: (patch[i] * spacing[i], patch[i]))
        patch[axis] = max(MIN_PATCH, patch[axis] - 2 ** topo["pool_per_axis"][axis])


def plan_batch(
    patch: Sequence[int], topology: dict, budget_gb: float, base_width: int, dataset_voxels: float, dims: int
) -> int:
    """The preferred batch for ``dims``, lowered to fit the memory budget and 5% of the dataset's voxels."""
    per_sample = math.prod(patch) * activation_bytes_per_voxel(topology, base_width)
    by_memory = int(budget_gb * 2**30 // per_sample)
    by_data = int(MAX_BATCH_FRACTION * dataset_voxels // math.prod(patch))
    return max(MIN_BATCH, min(PREFERRED_BATCH[dims], by_memory, by_data))
