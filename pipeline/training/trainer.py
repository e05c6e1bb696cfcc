"""Stage: train a UNet on the sampled cases; keep the best model folder by validation Dice.

With no validation cases (``sample.fold: all``) the model folder holds the last epoch.

Single process: ``python -m pipeline.stages.train``. Data-parallel: ``torchrun --nproc_per_node N -m
pipeline.stages.train`` (gloo on CPU, NCCL on CUDA; logging and checkpointing on rank 0). A checkpoint is
written atomically every epoch; if the stage is killed, running it again resumes from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from monai.utils import set_determinism
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.config import Config, ConfigError, flatten, to_dict
from pipeline.core import io
from pipeline.evaluation.tracking import environment_tags, run
from pipeline.inference.mlflow_model import log_model_folder
from pipeline.inference.model_folder import save_model_folder
from pipeline.inference.windows import build_inferer
from pipeline.networks.factory import build_model, count_parameters
from pipeline.preprocessing.preprocessor import load_plan
from pipeline.sampling.augment import BatchAugment, window_dims
from pipeline.sampling.locations import load_locations, read_samples
from pipeline.sampling.patches import class_ratios
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

CHECKPOINT = "last.pt"


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


def config_hash(cfg: Config) -> str:
    """What a checkpoint must match to be resumed: the sample and train blocks."""
    relevant = {"sample": to_dict(cfg.sample), "train": to_dict(cfg.train)}
    for key in ("threads", "num_workers", "cache_gb"):  # do not change results
        relevant["train"].pop(key)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def init_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device; starts a process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


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


def _bcast_flag(flag: bool) -> bool:
    t = torch.tensor([int(flag)])
    if dist.is_initialized():
        dist.broadcast(t, src=0)
    return bool(t.item())


def train(cfg: Config) -> dict:
    """Run (or resume) the whole training; returns the best epoch, best Dice and the MLflow run id."""
    t_cfg, s_cfg = cfg.train, cfg.sample
    flip_dims = window_dims(t_cfg.flip_axes, s_cfg.spatial_dims, s_cfg.slice_axis, "train.flip_axes")
    mirror_axes = t_cfg.inference.mirror_axes  # checked now, not at the first prediction
    window_dims(mirror_axes, s_cfg.spatial_dims, s_cfg.slice_axis, "train.inference.mirror_axes")
    rank, world, device = init_distributed()
    main_rank = rank == 0
    threads = t_cfg.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    set_determinism(seed=t_cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    pre_dir, samples_dir = Path(cfg.preprocess.out_dir), Path(s_cfg.out_dir)
    plan = load_plan(pre_dir)
    samples = read_samples(samples_dir)
    train_ids = samples.loc[samples.split == "train", "case_id"].tolist()
    val_ids = samples.loc[samples.split == "val", "case_id"].tolist()
    k = plan.num_classes
    budget = t_cfg.cache_gb * 2**30
    train_vols = load_volumes(pre_dir, samples_dir, train_ids, k, True, budget)
    val_vols = load_volumes(pre_dir, samples_dir, val_ids, k, False, max(0.0, budget - _nbytes(train_vols)))
    in_channels = int(train_vols[0]["image"].shape[0])
    spacing = np.asarray(plan.target_spacing)
    anisotropic = bool(spacing.max() / spacing.min() > 3)

    layout = memory_format(t_cfg.channels_last, s_cfg.spatial_dims)
    try:
        model = build_model(
            spatial_dims=s_cfg.spatial_dims, in_channels=in_channels, out_channels=k, **to_dict(t_cfg.model)
        )
    except ValueError as err:  # option combinations the schema cannot express (e.g. a dynunet-only setting)
        raise ConfigError(f"train.model: {err}") from None
    model = model.to(device, memory_format=layout)
    n_params = count_parameters(model)
    optimizer = make_optimizer(model, t_cfg.optimizer, t_cfg.lr, t_cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    ckpt_path = Path(t_cfg.checkpoint_dir) / CHECKPOINT
    chash = config_hash(cfg)
    state = read_checkpoint(ckpt_path, chash)
    history: list[dict] = []
    best = {"dice": -1.0, "epoch": -1}
    best_state = None
    start_epoch, elapsed_before, run_id = 0, 0.0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history, best, best_state = state["history"], state["best"], state["best_state"]
        start_epoch, elapsed_before, run_id = state["epoch"] + 1, state["elapsed"], state.get("run_id")
        logger.info("resuming from %s after epoch %d", ckpt_path, state["epoch"])
    net = DistributedDataParallel(model) if world > 1 else model

    ratios = class_ratios(k, s_cfg.foreground_ratio)
    patch_slice_axis = s_cfg.slice_axis if s_cfg.spatial_dims == 2 else None  # 2D: slices along it; 3D: None
    augment = BatchAugment(s_cfg.spatial_dims, anisotropic, flip_dims=flip_dims) if t_cfg.augment else None
    levels = model.deep_supr_num + 1 if getattr(model, "deep_supervision", False) else 1  # outputs per forward
    loss_fn = make_loss(t_cfg.loss.dice_include_background, t_cfg.loss.batch_dice, levels)
    inf = t_cfg.inference
    inferer = build_inferer(
        s_cfg.spatial_dims, s_cfg.patch_size, s_cfg.slice_axis, inf.overlap, inf.sw_batch_size, inf.blend
    )
    class_names = [plan.labels[i] for i in range(1, k)]
    meta = {
        "model": to_dict(t_cfg.model),
        "spatial_dims": s_cfg.spatial_dims,
        "in_channels": in_channels,
        "num_classes": k,
        "labels": {str(i): n for i, n in plan.labels.items()},
        "plan": plan.to_dict(),
        "patch_size": list(s_cfg.patch_size),
        "slice_axis": s_cfg.slice_axis,
        "inference": to_dict(inf),
        "config": to_dict(cfg),
        "parameters": n_params,
    }
    if main_rank:
        logger.info(
            "%s: %d parameters, %d train / %d val cases, device %s, %d threads x %d processes",
            t_cfg.model.name,
            n_params,
            len(train_ids),
            len(val_ids),
            device,
            threads,
            world,
        )

    budget_s = t_cfg.max_minutes * 60 if t_cfg.max_minutes else float("inf")
    start = time.monotonic() - elapsed_before
    tags = {**environment_tags(str(device), threads), "train.world_size": str(world)}
    tracking = (
        run(cfg.mlflow, run_id=run_id, run_name=f"train-{t_cfg.model.name}-{s_cfg.mode}", tags=tags)
        if main_rank
        else contextlib.nullcontext()
    )
    with tracking as tracker:
        if tracker is not None:
            if state is None:
                tracker.log_params(
                    {
                        **flatten(to_dict(cfg)),
                        "model.parameters": n_params,
                        "data.train_cases": len(train_ids),
                        "data.val_cases": len(val_ids),
                    }
                )
            meta["mlflow"] = {
                "run_id": tracker.run_id,
                "tracking_uri": tracker.uri,
                "experiment": cfg.mlflow.experiment,
            }
        epochs = range(start_epoch, t_cfg.epochs)
        bar = tqdm(epochs, desc="train", unit="epoch", disable=not main_rank, initial=start_epoch, total=t_cfg.epochs)
        for epoch in bar:
            t0 = time.monotonic()
            # the schedule follows whichever budget (epochs or wall clock) runs out first
            progress = max(epoch / t_cfg.epochs, (t0 - start) / budget_s)
            lr = t_cfg.lr * lr_factor(t_cfg.optimizer, progress)
            set_lr(optimizer, lr)
            loader = epoch_loader(
                train_vols,
                s_cfg.patch_size,
                ratios,
                epoch,
                t_cfg.seed,
                t_cfg.batch_size,
                t_cfg.iters_per_epoch,
                t_cfg.num_workers,
                patch_slice_axis,
                rank,
            )
            generator = torch.Generator().manual_seed(epoch_seed(t_cfg.seed, epoch, rank))
            loss = train_epoch(net, loader, loss_fn, optimizer, device, scaler, augment, generator, layout)
            row = {"epoch": epoch, "train_loss": loss, "lr": lr}
            last = epoch == t_cfg.epochs - 1
            if val_vols and (epoch % t_cfg.val_every == 0 or last):
                dice = validate(model, val_vols, inferer, k, device, rank, world)
                row.update({f"val_dice_{n}": float(d) for n, d in zip(class_names, dice, strict=True)})
                row["val_dice_mean"] = float(np.nanmean(dice))
            row["epoch_seconds"] = time.monotonic() - t0
            history.append(row)
            stop = _bcast_flag(time.monotonic() - start + row["epoch_seconds"] > budget_s and not last)
            if main_rank:
                tracker.log_metrics({k_: v for k_, v in row.items() if k_ != "epoch"}, step=epoch)
                # no validation cases (sample.fold: all): the model folder holds the last epoch
                improved = row.get("val_dice_mean", -1.0) > best["dice"] if val_vols else True
                if improved:
                    best = {"dice": row.get("val_dice_mean", float("nan")), "epoch": epoch}
                    best_state = {n: v.detach().cpu().clone() for n, v in model.state_dict().items()}
                    best_meta = {**meta, "epoch": epoch, "val_dice_mean": row.get("val_dice_mean")}
                    save_model_folder(t_cfg.out_dir, model, best_meta)
                _save_checkpoint(
                    ckpt_path,
                    model,
                    optimizer,
                    scaler,
                    epoch,
                    best,
                    best_state,
                    history,
                    time.monotonic() - start,
                    meta.get("mlflow", {}).get("run_id"),
                    chash,
                    complete=last or stop,
                )
                bar.set_postfix(loss=f"{loss:.3f}", dice=f"{row.get('val_dice_mean', float('nan')):.3f}")
            if stop:
                logger.info("wall-clock budget of %.1f min reached after epoch %d", t_cfg.max_minutes, epoch)
                break
        if main_rank:
            if not (Path(t_cfg.out_dir) / "model.pt").is_file() and best_state is not None:
                model.load_state_dict(best_state)  # resumed after the best epoch: rebuild the model folder
                best_dice = best["dice"] if val_vols else None
                save_model_folder(t_cfg.out_dir, model, {**meta, "epoch": best["epoch"], "val_dice_mean": best_dice})
            io.write_csv(t_cfg.log_file, pd.DataFrame(history))
            summary = {"best_epoch": best["epoch"], "train_minutes": (time.monotonic() - start) / 60}
            if val_vols:
                summary["best_val_dice_mean"] = best["dice"]
            tracker.log_metrics(summary)
            tracker.log_artifact(t_cfg.log_file)
            tracker.log_artifact(Path(t_cfg.out_dir) / "model.json", "model_folder")
            log_model_folder(tracker.run_id, t_cfg.out_dir, tracking_uri=tracker.uri)  # loadable by mlflow.pyfunc
            if val_vols:
                logger.info("best validation Dice %.4f at epoch %d", best["dice"], best["epoch"])
            else:
                logger.info("no validation cases: kept the last epoch (%d)", best["epoch"])
    if dist.is_initialized():
        dist.barrier()
    return {**best, "run_id": meta.get("mlflow", {}).get("run_id")}


def _nbytes(vols: list[dict]) -> int:
    return sum(v["image"].nbytes + v["label"].nbytes for v in vols if not isinstance(v["image"], np.memmap))


def _save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    best: dict,
    best_state: dict | None,
    history: list[dict],
    elapsed: float,
    run_id: str | None,
    chash: str,
    complete: bool,
) -> None:
    """Everything needed to resume, as tensors and plain values (loads with ``weights_only=True``)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "best": best,
        "best_state": best_state,
        "history": history,
        "elapsed": elapsed,
        "run_id": run_id,
        "config_hash": chash,
        "complete": complete,
    }
    io.write_atomic(path, lambda p: torch.save(state, p))
