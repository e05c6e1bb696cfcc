"""The self-contained model folder: weights plus everything prediction needs to rebuild the model.

``model.pt`` holds only the state dict (loaded with ``weights_only=True``); ``model.json`` holds the
network settings, the preprocessing plan, label names, inference settings, the full training config
and the SHA-256 of ``model.pt`` so a folder whose files do not belong together is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.core import io
from pipeline.networks.factory import build_model

logger = logging.getLogger(__name__)

WEIGHTS = "model.pt"
META = "model.json"
POSTPROCESSING = "postprocessing.json"  # chosen on out-of-fold predictions (pipeline.evaluation.crossval)
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
    weights = io.write_atomic(io.inside(folder, WEIGHTS), lambda p: torch.save(state, p))
    meta = {**meta, "format_version": FORMAT_VERSION, "weights_sha256": sha256(weights)}
    io.write_json(io.inside(folder, META), meta)
    return folder


def update_meta(folder: str | Path, **entries: object) -> None:
    """Add or replace top-level entries of ``model.json`` (the weights and their checksum stay)."""
    path = Path(folder) / META
    io.write_json(path, {**json.loads(path.read_text()), **entries})


REQUIRED = ("model", "spatial_dims", "in_channels", "num_classes", "plan", "patch_size", "weights_sha256")


def read_meta(folder: str | Path) -> dict:
    """``model.json`` of a model folder, checked for the entries prediction needs and their consistency."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found")
    path = folder / META
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found; is {folder} a model folder written by the train stage?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{path}: top level is not an object")
    missing = set(REQUIRED) - set(meta)
    if missing:
        raise ModelFolderError(f"{path}: missing entries {sorted(missing)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    check_meta(meta, path)
    return meta


def check_meta(meta: dict, source: str | Path = META) -> None:
    """Refuse metadata whose parts contradict each other (e.g. labels vs number of classes)."""
    dims = meta["spatial_dims"]
    if dims not in (2, 3) or len(meta["patch_size"]) != dims:
        raise ModelFolderError(f"{source}: patch_size {meta['patch_size']} does not fit spatial_dims {dims}")
    plan = meta["plan"]
    missing = {"target_spacing", "normalization", "crop_foreground", "labels"} - set(plan)
    if missing:
        raise ModelFolderError(f"{source}: plan is missing {sorted(missing)}")
    labels = meta.get("labels", plan["labels"])
    keys = sorted(int(k) for k in labels)
    if not keys or keys[0] != 0 or keys[-1] != int(meta["num_classes"]) - 1:
        raise ModelFolderError(f"{source}: labels {sorted(labels)} do not match num_classes {meta['num_classes']}")


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
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt file or pickled objects beyond tensors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"{weights}: cannot be loaded as a plain state dict ({first})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFolderError(
            f"{weights}: weights do not fit the network in {META}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta


# ------------------------------------------------------------------------------------------- ensembles

#: what every member of an ensemble must share: probabilities are averaged per window of one preprocessed volume
ENSEMBLE_KEYS = ("labels", "in_channels", "num_classes", "plan", "spatial_dims", "patch_size", "slice_axis")


def _fold_order(path: Path) -> tuple[int, str]:
    tail = path.name.rsplit("_", 1)[-1]
    return (int(tail), path.name) if tail.isdigit() else (1 << 30, path.name)


def model_folders(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The model folders ``paths`` name: each a model folder, or a folder of them (``fold_0/``, ``fold_1/``, ...)."""
    out: list[Path] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if not path.is_dir() or (path / META).is_file():
            out.append(path)  # read_meta names what is wrong with it
            continue
        members = sorted((d for d in path.iterdir() if d.is_dir() and (d / META).is_file()), key=_fold_order)
        members = _listed_folds(path, members)
        if not members:
            raise ModelFolderError(f"{path}: neither a model folder ({META}) nor a folder of model folders")
        out += members
    if not out:
        raise ModelFolderError("no model folder given")
    return out


def _listed_folds(path: Path, members: list[Path]) -> list[Path]:
    """The members a folder of folds lists in its ``postprocessing.json`` (``folds``: the folds ``cv.folds`` trained
    last), so fold folders left from an earlier run with more folds are not averaged in; all of them without one."""
    listed = path / POSTPROCESSING
    if not listed.is_file():
        return members
    folds = json.loads(listed.read_text()).get("folds")
    if folds is None:
        return members
    missing = [f for f in folds if not (path / f / META).is_file()]
    if missing:
        raise ModelFolderError(f"{listed}: lists fold folder(s) {', '.join(missing)}, not found in {path}")
    stale = [m.name for m in members if m.name not in folds]
    if stale:
        logger.warning("%s: ignoring fold folder(s) %s, not in its %s", path, ", ".join(stale), POSTPROCESSING)
    return [path / f for f in folds]


def check_ensemble(members: Sequence[tuple[Path, dict]]) -> None:
    """Refuse model folders that cannot be averaged: a different plan, labels, channels or window."""
    first_path, first = members[0]
    for path, meta in members[1:]:
        for key in ENSEMBLE_KEYS:
            if meta.get(key) != first.get(key):
                values = "" if key == "plan" else f" ({meta.get(key)!r} vs {first.get(key)!r})"
                raise ModelFolderError(
                    f"{path}: {key} differ{'s' if key == 'plan' else ''} from {first_path}{values}; "
                    "an ensemble needs models trained on the same plan, labels and channels"
                )


def load_ensemble(
    paths: str | Path | Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[list[torch.nn.Module], dict]:
    """Load one or several model folders (or folders of folds) for probability averaging.

    Returns the networks and the first folder's metadata, with ``ensemble`` listing every member folder when
    there is more than one, and ``postprocessing`` when the one folder given holds a ``postprocessing.json``.
    """
    folders = model_folders(paths)
    check_ensemble([(f, read_meta(f)) for f in folders])
    loaded = [load_model_folder(f, device) for f in folders]
    meta = dict(loaded[0][1])
    if len(folders) > 1:
        meta["ensemble"] = [str(f) for f in folders]
    given = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if len(given) == 1 and (given[0] / POSTPROCESSING).is_file():  # a model folder or a folder of folds
        meta["postprocessing"] = json.loads((given[0] / POSTPROCESSING).read_text())
    return [m for m, _ in loaded], meta
