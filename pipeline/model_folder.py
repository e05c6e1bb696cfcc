"""The self-contained model folder: weights plus everything prediction needs to rebuild the model.

``model.pt`` holds only the state dict (loaded with ``weights_only=True``); ``model.json`` holds the
network settings, the preprocessing plan, label names, inference settings, the full training config
and the SHA-256 of ``model.pt`` so a folder whose files do not belong together is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from pipeline import io
from pipeline.models import build_model

WEIGHTS = "model.pt"
META = "model.json"
FORMAT_VERSION = 1


class ModelFolderError(ValueError):
    """A model folder that is missing files or whose files do not match."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model_folder(folder: str | Path, model: torch.nn.Module, meta: dict) -> Path:
    """Write weights, then the metadata that names their checksum (each file atomically)."""
    folder = Path(folder)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    io.write_atomic(folder / WEIGHTS, lambda p: torch.save(state, p))
    io.write_json(folder / META, {**meta, "format_version": FORMAT_VERSION, "weights_sha256": sha256(folder / WEIGHTS)})
    return folder


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / META
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found; is {folder} a model folder written by the train stage?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None
    missing = {"model", "spatial_dims", "in_channels", "num_classes", "plan", "patch_size", "weights_sha256"} - set(
        meta
    )
    if missing:
        raise ModelFolderError(f"{path}: missing entries {sorted(missing)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from ``model.json`` and load ``model.pt`` (weights only) into it."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelFolderError(f"{weights}: not found")
    if sha256(weights) != meta["weights_sha256"]:
        raise ModelFolderError(f"{weights}: checksum does not match {folder / META}; the files are from different runs")
    model = build_model(
        spatial_dims=meta["spatial_dims"],
        in_channels=meta["in_channels"],
        out_channels=meta["num_classes"],
        **meta["model"],
    )
    state = torch.load(weights, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFolderError(
            f"{weights}: weights do not fit the network in {META}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
