"""Training: a network on the sampled cases; the model folder keeps the best epoch by validation Dice.

The steps: :func:`setup` (settings, process group, data, model, :func:`resume` from a checkpoint),
:func:`run_epoch` (train, validate when due), :func:`record_epoch` (best model folder, checkpoint),
:func:`finish` (model folder, log, MLflow); :func:`train` runs them.

With no validation cases (``sample.fold: all``) the model folder holds the last epoch.

Single process: ``python -m pipeline.stages.train``. Data-parallel: ``torchrun --nproc_per_node N -m
pipeline.stages.train`` (gloo on CPU, NCCL on CUDA; logging and checkpointing on rank 0). A checkpoint is
written atomically every epoch; if the stage is killed, running it again resumes from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.config import Config, ConfigError, flatten, to_dict
from pipeline.core import io
from pipeline.evaluation.evaluator import empty_policy
from pipeline.evaluation.tracking import Tracker, environment_tags, public_config, run
from pipeline.inference.mlflow_model import log_model_folder
from pipeline.inference.model_folder import save_model_folder, update_meta
from pipeline.inference.windows import build_inferer
from pipeline.networks.factory import build_model, count_parameters
from pipeline.preprocessing.plan import Plan
from pipeline.preprocessing.preprocessor import load_plan
from pipeline.preprocessing.settings import resolve, values
from pipeline.sampling.augment import BatchAugment, window_dims
from pipeline.sampling.locations import load_locations, read_samples
from pipeline.sampling.patches import class_ratios
from pipeline.training.checkpoint import CHECKPOINT, config_hash, read_checkpoint, save_checkpoint
from pipeline.training.distributed import barrier, broadcast_flag, init_distributed
from pipeline.training.engine import (
    epoch_loader,
    epoch_seed,
    lr_factor,
    make_loss,
    make_optimizer,
    memory_format,
    set_lr,
    train_epoch,
    validate,
)

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "Session", "finish", "load_volumes", "record_epoch", "run_epoch", "setup", "train"]


def load_volumes(
    pre_dir: Path,
    samples_dir: Path,
    case_ids: list[str],
    num_classes: int,
    with_locations: bool,
    budget_bytes: float = float("inf"),
) -> list[dict]:
    """Preprocessed arrays of the given cases: in memory up to ``budget_bytes``, memory-mapped beyond."""
    vols, used, mapped = [], 0, 0
    for cid in case_ids:
        image_path, label_path = pre_dir / "images" / f"{cid}.npy", pre_dir / "labels" / f"{cid}.npy"
        size = image_path.stat().st_size + label_path.stat().st_size
        in_memory = used + size <= budget_bytes
        used += size if in_memory else 0
        mapped += 0 if in_memory else 1
        mode = None if in_memory else "r"
        vol = {"case_id": cid, "image": np.load(image_path, mmap_mode=mode)}
        vol["label"] = np.load(label_path, mmap_mode=mode)
        if with_locations:
            vol["locations"] = load_locations(samples_dir, cid, num_classes)
        vols.append(vol)
    if mapped:
        logger.info("cache budget reached: %d of %d volumes are read from disk (memory-mapped)", mapped, len(vols))
    return vols


def _nbytes(vols: list[dict]) -> int:
    return sum(v["image"].nbytes + v["label"].nbytes for v in vols if not isinstance(v["image"], np.memmap))


@dataclass
class Session:
    """One training run: where it runs, its data, its model and optimiser, and how far it got."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    threads: int
    plan: Plan
    settings: dict  # the plan's training settings, planned or overridden (preprocessing.settings.resolve)
    train_vols: list[dict]
    val_vols: list[dict]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    layout: torch.memory_format
    ckpt_path: Path
    chash: str
    net: torch.nn.Module | None = None  # the model, wrapped for DDP when world > 1
    parts: dict = field(default_factory=dict)  # loss, augment, inferer, ratios, patch_slice_axis, flip_dims
    meta: dict = field(default_factory=dict)  # model.json entries of the model folder
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"dice": -1.0, "epoch": -1})
    best_state: dict | None = None
    start_epoch: int = 0
    elapsed_before: float = 0.0
    run_id: str | None = None
    resumed: bool = False

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def num_classes(self) -> int:
        return self.plan.num_classes

    def setting(self, name: str) -> object:
        return self.settings[name]["value"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset`` or a container), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup(cfg: Config) -> Session:
    """Check the settings, start the process group, load the data, build the model; resume if a checkpoint says so."""
    t_cfg, s_cfg = cfg.train, cfg.sample
    pre_dir, samples_dir = Path(cfg.preprocess.out_dir), Path(s_cfg.out_dir)
    plan = load_plan(pre_dir)
    settings = resolve(plan, cfg)  # the plan's settings, planned or overridden by the config
    st = values(settings)
    flip_dims = window_dims(st["flip_axes"], st["dims"], st["slice_axis"], "train.flip_axes")
    # checked now, not at the first prediction
    window_dims(t_cfg.inference.mirror_axes, st["dims"], st["slice_axis"], "train.inference.mirror_axes")
    rank, world, device = init_distributed()
    threads = t_cfg.threads or max(1, usable_cpus() // world)
    torch.set_num_threads(threads)
    set_determinism(seed=t_cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    samples = read_samples(samples_dir)
    train_ids = samples.loc[samples.split == "train", "case_id"].tolist()
    val_ids = samples.loc[samples.split == "val", "case_id"].tolist()
    k, budget = plan.num_classes, t_cfg.cache_gb * 2**30
    train_vols = load_volumes(pre_dir, samples_dir, train_ids, k, True, budget)
    val_vols = load_volumes(pre_dir, samples_dir, val_ids, k, False, max(0.0, budget - _nbytes(train_vols)))
    if "group" in samples.columns:  # validation pools a group's (a patient's) cases
        group_of = samples.set_index("case_id")["group"].fillna("").astype(str)
        for vol in val_vols:
            vol["group"] = group_of[vol["case_id"]]

    layout = memory_format(t_cfg.channels_last, st["dims"])
    in_channels = int(train_vols[0]["image"].shape[0])
    model_kwargs = {**to_dict(t_cfg.model), "depth": st["depth"], "strides": st["strides"]}
    model_kwargs["kernel_sizes"] = st["kernel_sizes"]
    model_kwargs["full_resolution_width"] = st["full_resolution_width"]
    try:
        model = build_model(spatial_dims=st["dims"], in_channels=in_channels, out_channels=k, **model_kwargs)
    except ValueError as err:  # option combinations the schema cannot express (e.g. a dynunet-only setting)
        raise ConfigError(f"train.model: {err}") from None
    model = model.to(device, memory_format=layout)
    optimizer = make_optimizer(model, t_cfg.optimizer, t_cfg.lr, t_cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    chash = config_hash(cfg, settings)
    session = Session(
        cfg, rank, world, device, threads, plan, settings, train_vols, val_vols, model, optimizer, scaler, layout,
        Path(t_cfg.checkpoint_dir) / CHECKPOINT, chash,
    )  # fmt: skip
    resume(session)
    session.net = DistributedDataParallel(model) if world > 1 else model
    session.parts = _training_parts(session, flip_dims)
    session.meta = _model_meta(session, in_channels, model_kwargs)
    return session


def resume(s: Session) -> None:
    """Load model, optimiser, scaler and progress from the checkpoint of an unfinished run with these settings."""
    state = read_checkpoint(s.ckpt_path, s.chash)
    if state is None:
        return
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    if s.scaler is not None and state.get("scaler"):
        s.scaler.load_state_dict(state["scaler"])
    s.history, s.best, s.best_state = state["history"], state["best"], state["best_state"]
    s.start_epoch, s.elapsed_before, s.run_id = state["epoch"] + 1, state["elapsed"], state.get("run_id")
    s.resumed = True
    logger.info("resuming from %s after epoch %d", s.ckpt_path, state["epoch"])


def _training_parts(s: Session, flip_dims: tuple[int, ...] | None) -> dict:
    """Loss, batch augmentation, validation inferer and patch sampling settings."""
    t_cfg, model, dims, axis = s.cfg.train, s.model, s.setting("dims"), s.setting("slice_axis")
    anisotropic = s.plan.slow_axis is not None
    levels = model.deep_supr_num + 1 if getattr(model, "deep_supervision", False) else 1  # outputs per forward
    inf = t_cfg.inference
    return {
        "ratios": class_ratios(s.num_classes, s.setting("foreground_ratio")),
        # 2D: slices along the slice axis; 3D: None
        "patch_slice_axis": axis if dims == 2 else None,
        "augment": BatchAugment(dims, anisotropic, flip_dims=flip_dims) if t_cfg.augment else None,
        "loss": make_loss(t_cfg.loss.dice_include_background, t_cfg.loss.batch_dice, levels),
        "policy": empty_policy(s.cfg.evaluate),  # validation scores empty masks as evaluation does
        "inferer": build_inferer(dims, s.setting("patch_size"), axis, inf.overlap, inf.sw_batch_size, inf.blend),
    }


def _model_meta(s: Session, in_channels: int, model_kwargs: dict) -> dict:
    """The model folder's ``model.json`` entries (epoch and Dice are added when it is written)."""
    t_cfg = s.cfg.train
    return {
        "model": model_kwargs,
        "spatial_dims": s.setting("dims"),
        "in_channels": in_channels,
        "num_classes": s.num_classes,
        "labels": {str(i): n for i, n in s.plan.labels.items()},
        "plan": s.plan.to_dict(),
        "patch_size": list(s.setting("patch_size")),
        "slice_axis": s.setting("slice_axis"),
        "settings": s.settings,
        "inference": inference_settings(to_dict(t_cfg.inference), s.setting("flip_axes")),
        "config": public_config(to_dict(s.cfg)),
        "parameters": count_parameters(s.model),
    }


def inference_settings(inference: dict, flip_axes: list[int]) -> dict:
    """The model folder's inference settings: test-time mirroring, when unset, mirrors the training flips."""
    return {**inference, "mirror_axes": flip_axes if inference["mirror_axes"] is None else inference["mirror_axes"]}


def run_epoch(s: Session, epoch: int, progress: float) -> dict:
    """Train one epoch (learning rate by ``progress`` in [0, 1]) and validate if due; returns the log row."""
    t_cfg, parts, epochs = s.cfg.train, s.parts, s.setting("epochs")
    t0 = time.monotonic()
    lr = t_cfg.lr * lr_factor(t_cfg.optimizer, progress)
    set_lr(s.optimizer, lr)
    loader = epoch_loader(
        s.train_vols,
        s.setting("patch_size"),
        parts["ratios"],
        epoch,
        t_cfg.seed,
        s.setting("batch_size"),
        s.setting("iters_per_epoch"),
        t_cfg.num_workers,
        parts["patch_slice_axis"],
        s.rank,
    )
    generator = torch.Generator().manual_seed(epoch_seed(t_cfg.seed, epoch, s.rank))
    loss = train_epoch(
        s.net, loader, parts["loss"], s.optimizer, s.device, s.scaler, parts["augment"], generator, s.layout
    )
    row = {"epoch": epoch, "train_loss": loss, "lr": lr}
    if s.val_vols and (epoch % t_cfg.val_every == 0 or epoch == epochs - 1):
        dice = validate(
            s.model, s.val_vols, parts["inferer"], s.num_classes, s.device, s.rank, s.world, parts["policy"]
        )
        names = [s.plan.labels[i] for i in range(1, s.num_classes)]
        row.update({f"val_dice_{n}": float(d) for n, d in zip(names, dice, strict=True)})
        row["val_dice_mean"] = float(np.nanmean(dice))
    row["epoch_seconds"] = time.monotonic() - t0
    return row


def record_epoch(s: Session, tracker: Tracker, row: dict, elapsed: float, complete: bool) -> None:
    """Rank 0: log the row, keep the model folder of the best epoch so far, write the checkpoint."""
    epoch = row["epoch"]
    tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
    # no validation cases (sample.fold: all): the model folder holds the last epoch
    improved = row.get("val_dice_mean", -1.0) > s.best["dice"] if s.val_vols else True
    if improved:
        s.best = {"dice": row.get("val_dice_mean", float("nan")), "epoch": epoch}
        s.best_state = {n: v.detach().cpu().clone() for n, v in s.model.state_dict().items()}
        save_model_folder(
            s.cfg.train.out_dir, s.model, {**s.meta, "epoch": epoch, "val_dice_mean": row.get("val_dice_mean")}
        )
    progress = {
        "epoch": epoch,
        "best": s.best,
        "best_state": s.best_state,
        "history": s.history,
        "elapsed": elapsed,
        "run_id": s.meta.get("mlflow", {}).get("run_id"),
    }
    save_checkpoint(s.ckpt_path, s.model, s.optimizer, s.scaler, progress, s.chash, complete)


def finish(s: Session, tracker: Tracker, minutes: float) -> None:
    """Rank 0: make sure the model folder holds the best epoch; write the log; log the summary and the model."""
    t_cfg, epochs = s.cfg.train, s.setting("epochs")
    # a run the wall clock stopped is marked so (model.json, MLflow, report): its epoch count is not the plan's
    stopped = bool(s.history) and s.history[-1]["epoch"] + 1 < epochs
    run_info = {"epochs_planned": epochs, "epochs_run": len(s.history), "stopped_by_max_minutes": stopped}
    run_info["minutes"] = round(minutes, 2)  # wall clock of the whole run (resumed runs included)
    tracker.set_tags({f"train.{k}": v for k, v in run_info.items()})
    s.meta["training"] = run_info
    if not (Path(t_cfg.out_dir) / "model.pt").is_file() and s.best_state is not None:
        s.model.load_state_dict(s.best_state)  # resumed after the best epoch: rebuild the model folder
        best_dice = s.best["dice"] if s.val_vols else None
        save_model_folder(t_cfg.out_dir, s.model, {**s.meta, "epoch": s.best["epoch"], "val_dice_mean": best_dice})
    elif (Path(t_cfg.out_dir) / "model.json").is_file():
        update_meta(t_cfg.out_dir, training=run_info)
    io.write_csv(t_cfg.log_path, pd.DataFrame(s.history))
    summary = {"best_epoch": s.best["epoch"], "train_minutes": minutes}
    if s.val_vols:
        summary["best_val_dice_mean"] = s.best["dice"]
    tracker.log_metrics(summary)
    tracker.log_artifact(t_cfg.log_path)
    tracker.log_artifact(Path(t_cfg.out_dir) / "model.json", "model_folder")
    # loadable by mlflow.pyfunc
    log_model_folder(tracker.run_id, t_cfg.out_dir, tracking_uri=tracker.connection_uri)
    if s.val_vols:
        logger.info("best validation Dice %.4f at epoch %d", s.best["dice"], s.best["epoch"])
    else:
        logger.info("no validation cases: kept the last epoch (%d)", s.best["epoch"])


def _start_tracking(s: Session, tracker: Tracker) -> None:
    """Log the parameters of a new run; note the run in the model folder's meta."""
    if not s.resumed:
        params = {**flatten(s.meta["config"]), "model.parameters": s.meta["parameters"]}
        params.update({"data.train_cases": len(s.train_vols), "data.val_cases": len(s.val_vols)})
        params.update({f"plan.{n}": f"{e['value']} ({e['source']})" for n, e in s.settings.items()})
        tracker.log_params(params)
    s.meta["mlflow"] = {"run_id": tracker.run_id, "tracking_uri": tracker.uri, "experiment": s.cfg.mlflow.experiment}


def train(cfg: Config) -> dict:
    """Run (or resume) the whole training; returns the best epoch, best Dice and the MLflow run id."""
    s = setup(cfg)
    t_cfg, epochs = cfg.train, s.setting("epochs")
    if s.main_rank:
        logger.info(
            "%s: %d parameters, %d train / %d val cases, device %s, %d threads x %d processes",
            t_cfg.model.name, s.meta["parameters"], len(s.train_vols), len(s.val_vols), s.device, s.threads, s.world,
        )  # fmt: skip
    budget_s = t_cfg.max_minutes * 60 if t_cfg.max_minutes else float("inf")
    start = time.monotonic() - s.elapsed_before
    tags = {**environment_tags(str(s.device), s.threads), "train.world_size": str(s.world)}
    name = f"train-{t_cfg.model.name}-{s.setting('dims')}d"
    tracking = run(cfg.mlflow, run_id=s.run_id, run_name=name, tags=tags) if s.main_rank else contextlib.nullcontext()
    with tracking as tracker:
        if tracker is not None:
            _start_tracking(s, tracker)
        bar = tqdm(range(s.start_epoch, epochs), desc="train", unit="epoch", disable=not s.main_rank,
                   initial=s.start_epoch, total=epochs)  # fmt: skip
        postfix: dict[str, str] = {}
        for epoch in bar:
            # the schedule follows whichever budget (epochs or wall clock) runs out first
            row = run_epoch(s, epoch, max(epoch / epochs, (time.monotonic() - start) / budget_s))
            s.history.append(row)
            last = epoch == epochs - 1
            stop = broadcast_flag(time.monotonic() - start + row["epoch_seconds"] > budget_s and not last)
            if s.main_rank:
                record_epoch(s, tracker, row, time.monotonic() - start, complete=last or stop)
                if "val_dice_mean" in row:  # epochs without validation keep showing the last validated Dice
                    postfix["val_dice"] = f"{row['val_dice_mean']:.3f} (epoch {epoch})"
                bar.set_postfix({"loss": f"{row['train_loss']:.3f}", **postfix})
            if stop:
                logger.info("wall-clock budget of %.1f min reached after epoch %d", t_cfg.max_minutes, epoch)
                break
        if s.main_rank:
            finish(s, tracker, (time.monotonic() - start) / 60)
    barrier()
    return {**s.best, "run_id": s.meta.get("mlflow", {}).get("run_id")}
