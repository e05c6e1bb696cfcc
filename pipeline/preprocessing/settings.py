"""Every data-dependent training setting: planned, or overridden by the config, with its source and reason.

One knob per setting: a config value ``null`` means "planned from the data", an explicit value overrides.
:func:`plan_settings` is the one place where the two meet; the result is written into ``plans.json``
(``settings``) and printed when preprocessing ends; ``sample`` and ``train`` apply the config's overrides
of the moment to the plan's dataset summary (:func:`resolve`: the same values unless the config changed
since), the model folder carries what training used, and ``evaluate``, ``predict`` and the report read it.
Each entry is ``{"value": ..., "source": "planned" | "overridden", "reason": "..."}``.

=================  ==============================  ===============================================
setting            config key                      planned
=================  ==============================  ===============================================
dims               ``sample.mode``                 2 for a one-slice axis or anisotropic spacing, else 3
slice_axis         ``sample.slice_axis``           the one-slice axis, else the slow axis, else 2
patch_size         ``sample.patch_size``           median shape shrunk to the memory budget (2D: then cropped,
                                                   to half the median shape at most, for ``MIN_STEPS``)
batch_size         ``train.batch_size``            :func:`~pipeline.preprocessing.topology.plan_batch`, lowered
                                                   for ``MIN_STEPS`` training steps in the budget
depth              ``train.model.depth``           pooling steps of the planned topology
full_resolution    ``train.model.                  ``base_width // 2`` for ``monai_unet`` when the typical
                   full_resolution_width``         structure is under ``THIN_VOXELS`` (4) voxels, else 0
flip_axes          ``train.flip_axes``             every axis but those along which two classes lie in a
                                                   fixed order (also ``inference.mirror_axes`` when unset)
strides, kernels   (follow patch and depth)        :func:`~pipeline.preprocessing.topology.plan_topology`
foreground_ratio   ``sample.foreground_ratio``     0.5
iters_per_epoch    ``train.iters_per_epoch``       one pass over the cases, 25-250 batches (fewer when
                                                   ``MIN_EPOCHS`` such passes do not fit the budget)
epochs             ``train.epochs``                ``train.target_minutes`` by the clock-free cost model
=================  ==============================  ===============================================

Training steps: a CPU budget can buy too few optimiser steps to train at all (the chest X-rays' 832x832
patches at batch 2: 518 steps in 15 minutes). The plan aims for ``MIN_STEPS`` (the hippocampus plan has
4,500): it lowers the batch (not below ``MIN_BATCH``), then, for 2D, crops the patch (never below half the
median image); the planner may first coarsen the in-plane spacing for thick structures
(:func:`pipeline.preprocessing.planner.coarsen_for_steps`). An explicit ``train.epochs`` turns this off.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.config import Config, ConfigError
from pipeline.preprocessing import topology as topo

logger = logging.getLogger(__name__)

PLANNED, OVERRIDDEN = "planned", "overridden"
FOREGROUND_RATIO = 0.5
MIN_ITERS, MAX_ITERS = 25, 250
MIN_EPOCHS, MAX_EPOCHS = 10, 1000
MIN_STEPS = 2000  # training steps the plan aims for within the budget (the hippocampus plan has ~4,500)
AXIS_NAMES = ("left-right", "posterior-anterior", "inferior-superior")


def entry(value: Any, override: Any, reason: str) -> dict:
    """One setting: ``override`` (not None) wins as "set in the config", else ``value`` as planned for ``reason``."""
    if override is not None:
        return {"value": _plain(override), "source": OVERRIDDEN, "reason": "set in the config"}
    return {"value": _plain(value), "source": PLANNED, "reason": reason}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def plan_dims(
    median_spacing: Sequence[float], single_axis: int | None, slow_axis: int | None, threshold: float
) -> tuple[int, int, str]:
    """2D or 3D, the slice axis, and why."""
    if single_axis is not None:
        return 2, single_axis, f"one slice along axis {single_axis} ({AXIS_NAMES[single_axis]}): a 2D dataset"
    if slow_axis is not None:
        finest = min(s for a, s in enumerate(median_spacing) if a != slow_axis)
        ratio = median_spacing[slow_axis] / finest
        return (
            2,
            slow_axis,
            (
                f"anisotropic: axis {slow_axis} spacing {median_spacing[slow_axis]:.3g} mm is {ratio:.1f}x the finest "
                f"{finest:.3g} mm (> {threshold:g}); 2D slices across the thick axis"
            ),
        )
    ratio = max(median_spacing) / min(median_spacing)
    return 3, 2, f"near-isotropic (spacing ratio {ratio:.1f} <= {threshold:g}): 3D patches"


def _depth_topology(planned: dict, depth: int, dims: int) -> dict:
    """The planned topology cut to (or extended with isotropic steps to) ``depth`` pooling steps."""
    strides = [list(s) for s in planned["strides"][:depth]]
    kernels = [list(k) for k in planned["kernel_sizes"][: depth + 1]]
    strides += [[2] * dims for _ in range(depth - len(strides))]
    kernels += [[3] * dims for _ in range(depth + 1 - len(kernels))]
    return {"strides": strides, "kernel_sizes": kernels, "pool_per_axis": _pools(strides, dims), "depth": depth}


def _pools(strides: Sequence[Sequence[int]], dims: int) -> list[int]:
    """Pooling steps along each axis of a network with these strides."""
    return [sum(1 for step in strides if step[i] > 1) for i in range(dims)]


def plan_settings(
    summary: Mapping[str, Any], spacing: Sequence[float], cfg: Config, crop: bool = True
) -> dict[str, dict]:
    """The training settings for a dataset ``summary`` (plan fingerprint) at ``spacing``, with overrides.

    ``summary`` needs ``median_spacing``, ``median_preprocessed_shape``, ``n_cases``, ``dataset_voxels``,
    ``single_axis`` and ``slow_axis``. ``crop=False``: a 2D patch is not cropped for more training steps
    (the planner's question: does this spacing reach them without it?). Raises ConfigError for overrides
    that contradict each other.
    """
    s = cfg.sample
    dims, axis, why = plan_dims(
        summary["median_spacing"],
        summary.get("single_axis"),
        summary.get("slow_axis"),
        cfg.preprocess.anisotropy_threshold,
    )
    out = {"dims": entry(dims, None if s.mode is None else int(s.mode[0]), why)}
    dims = out["dims"]["value"]
    out["slice_axis"] = entry(axis, s.slice_axis, why if dims == 2 else "unused in 3D")
    axes = [a for a in range(3) if dims == 3 or a != out["slice_axis"]["value"]]
    out["flip_axes"] = _flip_axes(summary.get("class_order") or [], cfg.train.flip_axes)
    out.update(_network(summary, [spacing[a] for a in axes], axes, dims, cfg))
    out.update(_schedule(summary, out, cfg))
    return _more_steps(summary, [spacing[a] for a in axes], axes, out, cfg, crop)


def training_steps(settings: Mapping[str, Mapping]) -> int:
    """Optimiser steps of a plan: epochs x iterations per epoch."""
    return int(settings["epochs"]["value"]) * int(settings["iters_per_epoch"]["value"])


def _more_steps(
    summary: Mapping[str, Any], spacing: list[float], axes: list[int], out: dict, cfg: Config, crop: bool
) -> dict:
    """Lower the planned batch, then (2D, ``crop``) crop the planned patch, until the budget buys ``MIN_STEPS``
    training steps, or neither can go further. Nothing changes when the config sets ``train.epochs``."""
    s, t, first = cfg.sample, cfg.train, training_steps(out)
    if t.epochs is not None or first >= MIN_STEPS:
        return out
    dims = out["dims"]["value"]
    fixed = {"patch": list(out["patch_size"]["value"]), "batch": int(out["batch_size"]["value"])}
    smallest = [max(topo.MIN_PATCH, math.ceil(summary["median_preprocessed_shape"][a] / 2)) for a in axes]
    why = f"for {MIN_STEPS} training steps in the budget ({first} without)"
    while training_steps(out) < MIN_STEPS:
        cut = [p - 2**k for p, k in zip(fixed["patch"], _pools(out["strides"]["value"], dims), strict=True)]
        shrinkable = [i for i in range(dims) if cut[i] >= smallest[i]]
        if t.batch_size is None and fixed["batch"] > topo.MIN_BATCH:
            fixed.update(batch=fixed["batch"] - 1, batch_reason=f"lowered {why}")
        elif crop and dims == 2 and s.patch_size is None and shrinkable:
            i = max(shrinkable, key=lambda a: (fixed["patch"][a] * spacing[a], fixed["patch"][a]))
            fixed["patch"][i] = cut[i]
            fixed["patch_reason"] = f"cropped {why}, at least half the median shape"
            fixed.setdefault("batch_reason", out["batch_size"]["reason"])  # a smaller patch keeps its batch
        else:
            break
        out = {**out, **_network(summary, spacing, axes, dims, cfg, fixed)}
        out.update(_schedule(summary, out, cfg))
    return out


def _network(
    summary: Mapping[str, Any],
    spacing: list[float],
    axes: list[int],
    dims: int,
    cfg: Config,
    fixed: Mapping[str, Any] | None = None,
) -> dict:
    """Patch, batch, depth, strides and kernel sizes; ``fixed``: a planned patch and batch, each with its
    reason, chosen for more training steps (:func:`_more_steps`)."""
    s, t, budget, base = cfg.sample, cfg.train, cfg.preprocess.memory_budget_gb, cfg.train.model.base_width
    fixed = fixed or {}
    out = {"full_resolution_width": _full_resolution(summary.get("thickness_mm"), spacing, cfg)}
    full = out["full_resolution_width"]["value"]
    if s.patch_size is None and "patch_reason" in fixed:
        patch, planned = list(fixed["patch"]), topo.plan_topology(fixed["patch"], spacing)
        planned["full_resolution_width"] = full
        out["patch_size"] = entry(patch, None, fixed["patch_reason"])
    elif s.patch_size is not None:
        if len(s.patch_size) != dims:
            raise ConfigError(f"sample.patch_size {list(s.patch_size)}: {dims}D needs {dims} values")
        patch, planned = list(s.patch_size), topo.plan_topology(s.patch_size, spacing)
        planned["full_resolution_width"] = full
        out["patch_size"] = entry(patch, patch, "")
    else:
        shape = [summary["median_preprocessed_shape"][a] for a in axes]
        patch, planned, gb = topo.fit_patch(shape, spacing, budget, base, max(topo.MIN_BATCH, t.batch_size or 0), full)
        reason = f"median shape {[round(v) for v in shape]} within {budget:g} GB ({gb:.2f} GB)"
        out["patch_size"] = entry(patch, None, reason)
    preferred = topo.PREFERRED_BATCH[dims]
    if "batch_reason" in fixed:
        batch, why = int(fixed["batch"]), fixed["batch_reason"]
    else:
        batch = topo.plan_batch(patch, planned, budget, base, summary["dataset_voxels"], dims)
        why = f"{preferred} for {dims}D unless memory or 5% of the data caps it"
    out["batch_size"] = entry(batch, t.batch_size, why)
    out["depth"] = entry(planned["depth"], t.model.depth, f"halving each axis while it keeps {topo.MIN_AXIS}+ voxels")
    network = _depth_topology(planned, out["depth"]["value"], dims)
    derived = "per axis from the patch, spacing and depth (nnU-Net's rule)"
    out["strides"] = {"value": network["strides"], "source": PLANNED, "reason": derived}
    out["kernel_sizes"] = {"value": network["kernel_sizes"], "source": PLANNED, "reason": derived}
    return out


def _flip_axes(class_order: Sequence[Mapping], override: Sequence[int] | None) -> dict:
    """Volume axes flipped in augmentation: every axis but those along which two classes lie in a fixed order
    (:func:`~pipeline.preprocessing.planner.class_order`), where a flip would swap what tells them apart."""
    kept = [a for a in range(3) if all(o["axis"] != a for o in class_order)]
    if len(kept) == 3:
        reason = "no two classes lie in a fixed order along any axis: every axis"
    else:
        pairs = "; ".join(
            f"classes {o['classes'][0]} and {o['classes'][1]} along {AXIS_NAMES[o['axis']]} "
            f"({o['consistency']:.0%} of cases, {abs(o['separation']):.2f} of the foreground apart)"
            for o in class_order
        )
        reason = f"not flipped where classes lie in a fixed order: {pairs}"
    return entry(kept, None if override is None else list(override), reason)


def _full_resolution(thickness_mm: float | None, spacing: list[float], cfg: Config) -> dict:
    """A full-resolution level for ``monai_unet`` when the typical structure is under 2 half-resolution voxels
    thick (median over classes of each class's median thickness): it costs ~2.7x per 3D iteration on a CPU."""
    model = cfg.train.model
    if model.name != "monai_unet":
        return entry(0, model.full_resolution_width, f"{model.name} keeps its own full-resolution level")
    if thickness_mm is None:
        return entry(0, model.full_resolution_width, "no foreground to measure")
    voxels = thickness_mm / min(spacing)
    thin = voxels < topo.THIN_VOXELS
    reason = f"typical structure {voxels:.1f} voxels thick ({'<' if thin else '>='} {topo.THIN_VOXELS:g})"
    reason += ": decode at full resolution" if thin else ": half-resolution decoding suffices"
    return entry(model.base_width // 2 if thin else 0, model.full_resolution_width, reason)


def _schedule(summary: Mapping[str, Any], net: Mapping[str, dict], cfg: Config) -> dict:
    """Foreground oversampling, iterations per epoch and epochs."""
    s, t = cfg.sample, cfg.train
    why = "half the patches centred on foreground (from a case that holds the class drawn)"
    out = {"foreground_ratio": entry(FOREGROUND_RATIO, s.foreground_ratio, why)}
    n, batch, budget = int(summary["n_cases"]), net["batch_size"]["value"], t.target_minutes * 60
    network = {"strides": net["strides"]["value"], "kernel_sizes": net["kernel_sizes"]["value"]}
    network["depth"] = len(network["strides"])
    network["full_resolution_width"] = net["full_resolution_width"]["value"]
    patch = net["patch_size"]["value"]
    classes = int(summary.get("n_classes", 2))  # a plan written before the count: as it was planned then
    step = topo.seconds_per_epoch(network, patch, batch, 1, t.model.base_width, classes)
    validation = _validation_seconds(summary, net, network, cfg) / max(1, t.val_every)
    iters = min(MAX_ITERS, max(MIN_ITERS, math.ceil(n / batch)))
    why = f"one pass over {n} cases ({MIN_ITERS}-{MAX_ITERS})"
    fitting = max(MIN_ITERS, math.floor((budget / MIN_EPOCHS - validation) / step))
    if fitting < iters:  # MIN_EPOCHS passes would overrun the budget: shorter epochs, not a longer run
        iters, why = fitting, f"{MIN_EPOCHS} epochs in the budget; one pass over {n} cases would be {iters}"
    out["iters_per_epoch"] = entry(iters, t.iters_per_epoch, why)
    per_epoch = out["iters_per_epoch"]["value"] * step + validation
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, round(budget / per_epoch)))
    reason = f"train.target_minutes {t.target_minutes:g} at an estimated {per_epoch:.1f} s/epoch on 2 CPU cores"
    reason += " (validation included)"
    out["epochs"] = entry(epochs, t.epochs, reason)
    return out


def _validation_seconds(summary: Mapping[str, Any], net: Mapping[str, dict], network: dict, cfg: Config) -> float:
    """Estimated seconds of one validation of fold ``sample.fold``'s cases (none for fold ``all``)."""
    if cfg.sample.fold == "all":
        return 0.0
    folds = max(1, min(cfg.split.folds, int(summary["n_cases"])))
    cases = math.ceil(int(summary["n_cases"]) / folds)
    dims, axis, patch = net["dims"]["value"], net["slice_axis"]["value"], net["patch_size"]["value"]
    shape = summary["median_preprocessed_shape"]
    slices = shape[axis] if dims == 2 else 1.0
    in_plane = [shape[a] for a in range(3) if dims == 3 or a != axis]
    overlap, base = cfg.train.inference.overlap, cfg.train.model.base_width
    return topo.validation_seconds(network, patch, in_plane, slices, cases, overlap, base)


def resolve(plan: Any, cfg: Config) -> dict[str, dict]:
    """The settings a stage uses: the plan's dataset summary with the overrides of the config *now*.

    Equal to ``plan.settings`` while the config's training keys are unchanged since preprocessing; a
    later override (e.g. ``dvc exp run -S train.batch_size=8``) takes effect without preprocessing again.
    """
    if not plan.fingerprint.get("dataset_voxels"):
        raise ConfigError("plans.json predates the planned training settings; rerun the preprocess stage")
    kept = {k: v for k, v in plan.settings.items() if k in ("picture_scale", "target_spacing", "normalization")}
    fresh = plan_settings(plan.fingerprint, plan.target_spacing, cfg)
    changed = [k for k, v in fresh.items() if k in plan.settings and plan.settings[k]["value"] != v["value"]]
    if changed:
        logger.info("settings changed in the config since preprocessing: %s", ", ".join(changed))
    return {**kept, **fresh}


def values(settings: Mapping[str, Mapping]) -> dict[str, Any]:
    """``{name: value}`` of a settings mapping."""
    return {k: v["value"] for k, v in settings.items()}


def format_settings(settings: Mapping[str, Mapping]) -> str:
    """One compact block: a line per setting, ``name  value  [source]  reason``."""
    width = max((len(k) for k in settings), default=0)
    lines = []
    for name, entry in settings.items():
        value = json_compact(entry["value"])
        lines.append(f"  {name:<{width}}  {value}  [{entry['source']}]  {entry.get('reason', '')}".rstrip())
    return "\n".join(lines)


def json_compact(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(json_compact(v) for v in value) + "]"
    return str(value)
