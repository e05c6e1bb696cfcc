"""The report's figures: learning curves, metric distributions and contour overlays, as base64 PNG.

Drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``, no pyplot state), so no display and no
global figure state are involved; :mod:`pipeline.evaluation.report` embeds them in the HTML page.
"""

from __future__ import annotations

import base64
import functools
import io as _io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

PLOT_METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "hd95_mm", "assd_mm", "volume_rel_diff")
METRIC_LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "nsd": "NSD",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
    "volume_rel_diff": "relative volume difference",
}
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
DPI = 96


@dataclass(frozen=True)
class Overlay:
    """One case to draw: image, reference and prediction on the same voxel grid (2D or 3D).

    ``role`` is e.g. ``"best"``; ``spacing`` the voxel size per axis in mm (sets the aspect ratio);
    ``picture``: a 2D picture (x = column, y = row, no physical spacing), drawn the right way up.
    """

    role: str
    case_id: str
    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    spacing: tuple[float, ...]
    mean_dice: float = math.nan
    picture: bool = False


def slice_axis(spacing: Sequence[float]) -> int:
    """Axis to slice along: the coarsest (through-plane) axis; the last one when isotropic."""
    sp = np.asarray(spacing, dtype=float)
    coarse = np.flatnonzero(np.isclose(sp, sp.max(), rtol=1e-3))
    return int(coarse[-1])


def choose_slices(reference: np.ndarray, prediction: np.ndarray, axis: int, n: int = 3) -> list[int]:
    """Up to ``n`` slice indices spread through the reference foreground along ``axis``.

    Falls back to the prediction's foreground when the reference is empty, and to the central
    slices when both are empty.
    """
    others = tuple(a for a in range(reference.ndim) if a != axis)
    for mask in (reference > 0, prediction > 0):
        candidates = np.flatnonzero(mask.any(axis=others))
        if candidates.size:
            break
    else:
        start = max(0, reference.shape[axis] // 2 - n // 2)
        candidates = np.arange(start, min(start + n, reference.shape[axis]))
    if candidates.size <= n:
        return [int(i) for i in candidates]
    # evenly spaced inside the extent (25/50/75 % for n = 3); a step >= 1 keeps them distinct
    positions = (np.arange(1, n + 1) * candidates.size) // (n + 1)
    return [int(i) for i in candidates[positions]]


def _plain_text(draw: Callable[..., str]) -> Callable[..., str]:
    """Draw with math text off: a ``$`` in a label or case name is shown as it is, never parsed as TeX."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        with rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


def _png(fig: Figure) -> str:
    """Base64 PNG of a figure, drawn by the Agg canvas."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


@_plain_text
def learning_curves_png(train_log: pd.DataFrame) -> str:
    """Training loss, validation Dice per class and learning rate against the epoch."""
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    epoch = train_log["epoch"] if "epoch" in train_log else pd.Series(range(len(train_log)))
    if "train_loss" in train_log:
        axes[0].plot(epoch, train_log["train_loss"], marker=".", color="#333")
    axes[0].set(title="training loss", xlabel="epoch")
    val_cols = [c for c in train_log.columns if c.startswith("val_dice_")]
    for i, col in enumerate(val_cols):
        ok = train_log[col].notna()
        is_mean = col == "val_dice_mean"
        axes[1].plot(
            epoch[ok],
            train_log.loc[ok, col],
            marker=".",
            lw=2.5 if is_mean else 1.2,
            color="#000" if is_mean else CLASS_COLOURS[i % len(CLASS_COLOURS)],
            label=col.removeprefix("val_dice_"),
        )
    if val_cols:
        axes[1].legend(fontsize=8)
    axes[1].set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
    if "lr" in train_log:
        axes[2].plot(epoch, train_log["lr"], color="#555")
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


@_plain_text
def metric_distributions_png(per_case: pd.DataFrame, metrics: Sequence[str] = PLOT_METRICS) -> str:
    """One panel per metric: a box per class with the per-case values as a jittered strip."""
    metrics = [m for m in metrics if m in per_case.columns]
    classes = list(dict.fromkeys(per_case["class_name"].astype(str)))
    ncols = 3
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig = Figure(figsize=(4.0 * ncols, 3.3 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics, strict=False):
        data, missing = [], []
        for cls in classes:
            values = pd.to_numeric(per_case.loc[per_case["class_name"].astype(str) == cls, metric], errors="coerce")
            data.append(values.dropna().to_numpy(float))
            missing.append(int(values.isna().sum()))
        positions = np.arange(1, len(classes) + 1)
        filled = [i for i, d in enumerate(data) if d.size]
        if filled:
            ax.boxplot(
                [data[i] for i in filled],
                positions=positions[filled],
                widths=0.5,
                showfliers=False,
                medianprops={"color": "#000"},
            )
        for i, d in enumerate(data):
            x = positions[i] + rng.uniform(-0.15, 0.15, size=d.size)
            ax.scatter(x, d, s=12, alpha=0.7, color=CLASS_COLOURS[i % len(CLASS_COLOURS)], zorder=3)
        labels = [f"{c}\n({m} missing)" if m else c for c, m in zip(classes, missing, strict=True)]
        ax.set_xticks(positions, labels, fontsize=8)
        ax.set_xlim(0.4, len(classes) + 0.6)
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


@_plain_text
def overlay_png(overlay: Overlay, class_names: Mapping[int, str], n_slices: int = 3) -> str:
    """Slices of the image with reference (solid) and prediction (dashed) contours per class."""
    image = np.asarray(overlay.image, dtype=np.float32)
    ref, pred = np.asarray(overlay.reference), np.asarray(overlay.prediction)
    if image.ndim == 2:  # a single slice: treat as a volume of depth 1
        image, ref, pred = image[..., None], ref[..., None], pred[..., None]
        spacing = (*overlay.spacing[:2], 1.0)
        axis = 2
    else:
        spacing = tuple(overlay.spacing)
        axis = slice_axis(spacing)
    slices = choose_slices(ref, pred, axis, n_slices)
    col_axis, row_axis = [a for a in range(3) if a != axis]  # transposed slices: rows = second in-plane axis
    vmin, vmax = _window(image)
    fig = Figure(figsize=(3.6 * len(slices), 3.9))
    axes = np.atleast_1d(fig.subplots(1, len(slices)))
    present = [k for k in sorted(class_names) if k != 0 and (np.any(ref == k) or np.any(pred == k))]
    for ax, k in zip(axes, slices, strict=True):
        img2d = np.take(image, k, axis=axis).T
        ref2d, pred2d = np.take(ref, k, axis=axis).T, np.take(pred, k, axis=axis).T
        ax.imshow(
            img2d,
            cmap="gray",
            vmin=vmin,
            vmax=vmax,
            origin="upper" if overlay.picture else "lower",
            aspect=spacing[row_axis] / spacing[col_axis],
            interpolation="nearest",
        )
        for c in present:
            colour = CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]
            for mask, style in ((ref2d == c, "solid"), (pred2d == c, "dashed")):
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.4)
        ax.set_title("2D image (no physical spacing)" if overlay.picture else f"slice {k} (axis {axis})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], color=CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)], lw=2, label=str(class_names[c]))
        for c in present
    ]
    handles += [
        Line2D([], [], color="#777", lw=1.5, ls="solid", label="reference"),
        Line2D([], [], color="#777", lw=1.5, ls="dashed", label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{overlay.role}: {overlay.case_id} (mean Dice {overlay.mean_dice:.3f})", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return _png(fig)
