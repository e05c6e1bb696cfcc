"""Topology, patch, batch and cost planning (pipeline.preprocessing.topology)."""

from __future__ import annotations

import math

import pytest

from pipeline.preprocessing import topology as topo


def test_anisotropic_spacing_pools_the_slow_axis_later_with_flat_kernels_first() -> None:
    t = topo.plan_topology([256, 256, 24], [0.78, 0.78, 6.5])
    # the thick axis waits until the in-plane axes, halved three times (6.24 mm), are comparable to 6.5 mm
    assert t["strides"][:3] == [[2, 2, 1]] * 3
    assert t["strides"][3] == [2, 2, 2]
    assert t["kernel_sizes"][0] == [3, 3, 1] and t["kernel_sizes"][3] == [3, 3, 3]
    assert t["pool_per_axis"] == [5, 5, 2] and t["depth"] == 5
    assert len(t["kernel_sizes"]) == t["depth"] + 1
    # the bottleneck keeps at least MIN_AXIS voxels along every axis
    assert all(p / 2**k >= topo.MIN_AXIS for p, k in zip([256, 256, 24], t["pool_per_axis"], strict=True))


def test_isotropic_spacing_pools_every_axis_together() -> None:
    t = topo.plan_topology([40, 56, 40], [1.0, 1.0, 1.0])
    assert t["strides"] == [[2, 2, 2]] * 3 and t["pool_per_axis"] == [3, 3, 3]
    assert all(k == [3, 3, 3] for k in t["kernel_sizes"])


def test_fit_patch_covers_a_small_median_shape_and_rounds_to_the_pooling() -> None:
    patch, t, gb = topo.fit_patch([35, 50, 36], [1, 1, 1], 4.0, 16)
    assert patch == [40, 56, 40] and t["depth"] == 3 and gb < 4.0


@pytest.mark.parametrize("budget", [0.25, 1.0, 4.0])
def test_fit_patch_respects_the_memory_budget(budget: float) -> None:
    patch, t, gb = topo.fit_patch([300, 300, 200], [1, 1, 1], budget, 32)
    need = math.prod(patch) * topo.activation_bytes_per_voxel(t, 32) * topo.MIN_BATCH / 2**30
    assert need == pytest.approx(gb) and gb <= budget
    assert all(p % 2**k == 0 for p, k in zip(patch, t["pool_per_axis"], strict=True))


def test_batch_is_capped_by_memory_and_by_the_data() -> None:
    t = topo.plan_topology([40, 56, 40], [1, 1, 1])
    assert topo.plan_batch([40, 56, 40], t, 4.0, 16, dataset_voxels=1e9, dims=3) == topo.PREFERRED_BATCH[3]
    assert topo.plan_batch([40, 56, 40], t, 4.0, 16, dataset_voxels=3 * 89600 / 0.05, dims=3) == 3
    assert topo.plan_batch([40, 56, 40], t, 1e-4, 16, dataset_voxels=1e9, dims=3) == topo.MIN_BATCH


def test_cost_model_reproduces_its_calibration_runs_within_a_quarter() -> None:
    step = topo.SECONDS_PER_ITERATION
    hippo = {**topo.plan_topology([40, 56, 40], [1, 1, 1]), "full_resolution_width": 8}
    assert topo.seconds_per_epoch(hippo, [40, 56, 40], 4, 1, 16) == pytest.approx(0.39 + step, rel=0.25)
    hippo_half = topo.plan_topology([40, 56, 40], [1, 1, 1])
    assert topo.seconds_per_epoch(hippo_half, [40, 56, 40], 4, 1, 16) == pytest.approx(0.14 + step, rel=0.25)
    photo = {**topo.plan_topology([544, 544], [1, 1]), "full_resolution_width": 8}
    assert topo.seconds_per_epoch(photo, [544, 544], 2, 1, 16) == pytest.approx(0.89 + step, rel=0.25)
    xray = topo.plan_topology([832, 832], [1, 1])
    assert topo.seconds_per_epoch(xray, [832, 832], 2, 1, 16) == pytest.approx(1.3 + step, rel=0.25)
    # BraTS 96^3 x2 with 5 classes: 1.02 s a step timed alone, 0.71 s with 2 classes (the classes' cost per voxel)
    brain = topo.plan_topology([96, 96, 96], [1, 1, 1])
    assert topo.seconds_per_epoch(brain, [96] * 3, 2, 1, 16, classes=5) == pytest.approx(1.02 + step, rel=0.25)
    assert topo.seconds_per_epoch(brain, [96] * 3, 2, 1, 16, classes=2) == pytest.approx(0.71 + step, rel=0.25)
    assert topo.seconds_per_epoch(hippo, [40, 56, 40], 4, 1, 16, classes=3) == topo.seconds_per_epoch(
        hippo, [40, 56, 40], 4, 1, 16
    )  # the calibration networks' classes cost nothing extra
    # twice the iterations cost twice the time: no clock involved
    assert topo.seconds_per_epoch(hippo, [40, 56, 40], 4, 100, 16) == pytest.approx(
        2 * topo.seconds_per_epoch(hippo, [40, 56, 40], 4, 50, 16)
    )
