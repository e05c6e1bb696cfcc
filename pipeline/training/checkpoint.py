"""The resume checkpoint (``last.pt``): written atomically every epoch, read back when the stage reruns.

It holds tensors and plain values only (loads with ``weights_only=True``) and the hash of the settings it
was made with (:func:`config_hash`): a checkpoint of other settings, or of a completed run, is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from pipeline.config import Config, to_dict
from pipeline.core import io

logger = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


def config_hash(cfg: Config, settings: dict | None = None) -> str:
    """What a checkpoint must match to be resumed: sample and train blocks, the plan's settings, the empty policy."""
    relevant = {"sample": to_dict(cfg.sample), "train": to_dict(cfg.train), "settings": settings or {}}
    relevant["empty_policy"] = to_dict(cfg.evaluate.empty_policy)  # validation scores empty masks by it
    for key in ("threads", "num_workers", "cache_gb"):  # do not change results
        relevant["train"].pop(key)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def read_checkpoint(path: Path, expected_hash: str) -> dict | None:
    """The checkpoint of an unfinished run with the same settings, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is ignored, training starts over
        logger.warning("%s: unreadable checkpoint (%s): starting from scratch", path, err)
        return None
    if state.get("config_hash") != expected_hash:
        logger.info("%s: made with other settings: starting from scratch", path)
        return None
    if state.get("complete"):
        logger.info("%s: previous run completed: starting from scratch", path)
        return None
    return state


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: dict,
    chash: str,
    complete: bool,
) -> None:
    """Everything needed to resume. ``progress``: epoch, best, best_state, history, elapsed, run_id."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        **{k: progress[k] for k in ("epoch", "best", "best_state", "history", "elapsed", "run_id")},
        "config_hash": chash,
        "complete": complete,
    }
    io.write_atomic(path, lambda p: torch.save(state, p))
