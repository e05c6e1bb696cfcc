"""The plan: what preprocessing did, and what every later stage reads (the contract between stages).

:class:`Plan` is written by :func:`pipeline.preprocessing.planner.make_plan` into ``plan.json`` and the model
folder; :class:`NormalizeChannelsd` is the per-channel intensity normalisation it prescribes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.transforms import MapTransform

from pipeline.preprocessing.transforms import body_mask

SCHEMES = ("ct", "zscore", "none")


@dataclass(frozen=True)
class Plan:
    """What preprocessing did, and what inference must redo on a new scan.

    The first five fields are the original plan; the rest have defaults so plans written before they
    existed still load (:meth:`from_dict`). ``intensity`` holds one entry per input channel:
    ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}``, ``{"scheme": "zscore"}`` (per image; with
    ``"body": true`` over the body only, 0 outside) or ``{"scheme": "none"}``; empty means "use
    ``normalization`` for every channel".
    """

    target_spacing: tuple[float, float, float]
    normalization: str
    crop_foreground: bool
    labels: dict[int, str]
    modalities: dict[int, str]
    intensity: tuple[dict, ...] = ()
    slow_axis: int | None = None  # anisotropic data: RAS axis resampled apart from the other two
    image_interp: str = "linear"  # in-plane (or all axes) image interpolation: linear | spline
    slow_axis_interp: str = "linear"  # image interpolation along the slow axis: linear | nearest | spline
    label_interp: str = "nearest"  # nearest | linear (one-hot linear, then arg-max)
    fingerprint: dict = field(default_factory=dict)  # dataset summary the plan came from (informational)
    label_values: tuple[int, ...] = ()  # stored label value of each class (empty: 0..K-1), see core/labels
    single_axis: int | None = None  # RAS axis with one slice (a 2D dataset): never resampled
    settings: dict = field(default_factory=dict)  # name -> {"value", "source", "reason"} (preprocessing.settings)
    # 2D pictures brought to this shape's size (preprocessing.pictures); None: kept as they are
    picture_reference: tuple[int, int, int] | None = None

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    def setting(self, name: str) -> Any:
        """The value of a planned (or overridden) training setting, e.g. ``plan.setting("patch_size")``."""
        if name not in self.settings:
            raise KeyError(f"plans.json has no setting {name!r}; rerun the preprocess stage to plan it")
        return self.settings[name]["value"]

    def transform_kwargs(self) -> dict:
        """Keyword arguments of :func:`~pipeline.preprocessing.transforms.preprocessing` for this plan's chain."""
        spacing = [-1.0 if a == self.single_axis else float(s) for a, s in enumerate(self.target_spacing)]
        scaled = {"picture_reference": list(self.picture_reference)} if self.picture_reference else {}
        return {
            **scaled,  # only when set: the volumes (and their hash) of other plans stay as they were
            "target_spacing": tuple(spacing),  # -1: keep the scan's spacing (a one-slice axis)
            "normalization": self.normalization,
            "crop_foreground": self.crop_foreground,
            "intensity": [dict(c) for c in self.intensity] or None,
            "slow_axis": self.slow_axis,
            "image_interp": self.image_interp,
            "slow_axis_interp": self.slow_axis_interp,
            "label_interp": self.label_interp,
            "num_classes": self.num_classes,
            "channels": len(self.intensity) or None,
            "label_values": list(self.label_values),
        }

    def volume_hash(self) -> str:
        """Hash of everything that determines the written volumes (not the patch/network plan)."""
        key = {**self.transform_kwargs(), "labels": {str(k): v for k, v in sorted(self.labels.items())}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "target_spacing": list(self.target_spacing),
            "normalization": self.normalization,
            "crop_foreground": self.crop_foreground,
            "labels": {str(k): v for k, v in self.labels.items()},
            "modalities": {str(k): v for k, v in self.modalities.items()},
            "intensity": [dict(c) for c in self.intensity],
            "slow_axis": self.slow_axis,
            "image_interp": self.image_interp,
            "slow_axis_interp": self.slow_axis_interp,
            "label_interp": self.label_interp,
            "fingerprint": self.fingerprint,
            "label_values": list(self.label_values),
            "single_axis": self.single_axis,
            "settings": self.settings,
            "picture_reference": None if self.picture_reference is None else list(self.picture_reference),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        slow, single, reference = d.get("slow_axis"), d.get("single_axis"), d.get("picture_reference")
        return cls(
            tuple(float(s) for s in d["target_spacing"]),  # type: ignore[arg-type]
            d["normalization"],
            bool(d["crop_foreground"]),
            {int(k): v for k, v in d["labels"].items()},
            {int(k): v for k, v in d["modalities"].items()},
            intensity=tuple(dict(c) for c in d.get("intensity") or ()),
            slow_axis=None if slow is None else int(slow),
            image_interp=d.get("image_interp", "linear"),
            slow_axis_interp=d.get("slow_axis_interp", "linear"),
            label_interp=d.get("label_interp", "nearest"),
            fingerprint=dict(d.get("fingerprint") or {}),
            label_values=tuple(int(v) for v in d.get("label_values") or ()),
            single_axis=None if single is None else int(single),
            settings=dict(d.get("settings") or {}),
            picture_reference=None if reference is None else tuple(int(v) for v in reference),  # type: ignore[arg-type]
        )


# ------------------------------------------------------------------------------------ normalisation


def normalize_channels(
    image: torch.Tensor, channels: Sequence[Mapping[str, Any]], body: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalise each channel of a (C, ...) float tensor by its scheme; returns a new tensor (meta kept).

    A ``zscore`` channel with ``"body": true`` takes its mean and std over ``body`` (a (1, ...) mask; default:
    :func:`~pipeline.preprocessing.transforms.body_mask` of ``image``) and is 0 outside it.
    """
    if len(channels) != image.shape[0]:
        raise ValueError(f"normalisation planned for {len(channels)} channel(s), the image has {image.shape[0]}")
    out = image.clone() if image.is_floating_point() else image.float()
    if any(spec.get("body") for spec in channels):
        inside = (body_mask(out) if body is None else torch.as_tensor(body)).reshape(out.shape[1:]).bool()
    for c, spec in enumerate(channels):
        x = out[c]
        scheme = spec.get("scheme", "zscore")
        if scheme == "ct":
            lo, hi = spec["clip"]
            x.clamp_(float(lo), float(hi)).sub_(float(spec["mean"])).div_(max(float(spec["std"]), 1e-8))
        elif scheme == "zscore":
            values = x[inside] if spec.get("body") and bool(inside.any()) else x
            mean, std = values.mean(), values.std(unbiased=False)
            x.sub_(mean).div_(std if float(std) > 1e-8 else 1.0)
            if spec.get("body"):
                x.masked_fill_(~inside, 0.0)
        elif scheme != "none":
            raise ValueError(f"unknown normalisation scheme {scheme!r} (expected one of {SCHEMES})")
    return out


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation from the plan (``ct``, ``zscore`` per image, ``none``).

    ``body_key``: the entry holding the body mask for ``"body": true`` channels, taken before the crop (so a
    crop that leaves no background does not make the lowest tissue voxel the body's edge); removed here.
    Not spatial, so nothing to invert.
    """

    def __init__(
        self, keys: Hashable | Sequence[Hashable], channels: Sequence[Mapping[str, Any]], body_key: str | None = None
    ) -> None:
        super().__init__(keys)
        self.body_key = body_key
        for spec in channels:
            if spec.get("scheme", "zscore") not in SCHEMES:
                raise ValueError(f"unknown normalisation scheme {spec.get('scheme')!r} (expected one of {SCHEMES})")
            if spec.get("scheme") == "ct" and not {"clip", "mean", "std"} <= set(spec):
                raise ValueError("ct normalisation needs 'clip', 'mean' and 'std' (dataset statistics)")
        self.channels = [dict(c) for c in channels]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        body = d.pop(self.body_key, None) if self.body_key else None
        for key in self.key_iterator(d):
            d[key] = normalize_channels(d[key], self.channels, body)
        return d
