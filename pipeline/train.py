"""Stage: train a UNet on the sampled cases; keep the best model folder by validation Dice."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from tqdm import tqdm

from pipeline import io
from pipeline.config import Config, flatten, stage_args, to_dict
from pipeline.engine import lr_factor, make_loader, make_loss, make_optimizer, set_lr, train_epoch, validate
from pipeline.inference import build_inferer, default_device
from pipeline.model_folder import save_model_folder
from pipeline.models import build_model, count_parameters
from pipeline.preprocessing import load_plan
from pipeline.sampling import load_locations, read_samples
from pipeline.tracking import environment_tags, run

logger = logging.getLogger(__name__)


def load_volumes(
    pre_dir: Path, samples_dir: Path, case_ids: list[str], num_classes: int, with_locations: bool
) -> list[dict]:
    """Preprocessed image/label arrays (and crop-centre locations) of the given cases, in memory."""
    vols = []
    for cid in case_ids:
        vol = {
            "case_id": cid,
            "image": np.load(pre_dir / "images" / f"{cid}.npy"),
            "label": np.load(pre_dir / "labels" / f"{cid}.npy"),
        }
        if with_locations:
            vol["locations"] = load_locations(samples_dir, cid, num_classes)
        vols.append(vol)
    return vols


def train(cfg: Config) -> dict:
    """Run the whole training; returns a summary (best epoch, best Dice, run id)."""
    t_cfg, s_cfg = cfg.train, cfg.sample
    threads = t_cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    set_determinism(seed=t_cfg.seed)
    device = default_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    pre_dir, samples_dir = Path(cfg.preprocess.out_dir), Path(s_cfg.out_dir)
    plan = load_plan(pre_dir)
    samples = read_samples(samples_dir)
    train_ids = samples.loc[samples.split == "train", "case_id"].tolist()
    val_ids = samples.loc[samples.split == "val", "case_id"].tolist()
    k = plan.num_classes
    train_vols = load_volumes(pre_dir, samples_dir, train_ids, k, with_locations=True)
    val_vols = load_volumes(pre_dir, samples_dir, val_ids, k, with_locations=False)
    in_channels = int(train_vols[0]["image"].shape[0])
    spacing = np.asarray(plan.target_spacing)
    anisotropic = bool(spacing.max() / spacing.min() > 3)

    model = build_model(
        spatial_dims=s_cfg.spatial_dims, in_channels=in_channels, out_channels=k, **to_dict(t_cfg.model)
    ).to(device)
    n_params = count_parameters(model)
    loader = make_loader(
        train_vols,
        s_cfg.patch_size,
        k,
        s_cfg.foreground_ratio,
        s_cfg.spatial_dims,
        s_cfg.slice_axis,
        t_cfg.batch_size,
        t_cfg.iters_per_epoch,
        t_cfg.augment,
        t_cfg.num_workers,
        anisotropic,
        t_cfg.seed,
    )
    loss_fn = make_loss()
    optimizer = make_optimizer(model, t_cfg.optimizer, t_cfg.lr, t_cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
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
    logger.info(
        "%s: %d parameters, %d train / %d val cases, device %s, %d threads",
        t_cfg.model.name,
        n_params,
        len(train_ids),
        len(val_ids),
        device,
        threads,
    )

    budget_s = t_cfg.max_minutes * 60 if t_cfg.max_minutes else float("inf")
    history: list[dict] = []
    best = {"dice": -1.0, "epoch": -1}
    start = time.monotonic()
    tags = environment_tags(str(device), threads)
    with run(cfg.mlflow, run_name=f"train-{t_cfg.model.name}-{s_cfg.mode}", tags=tags) as tracker:
        tracker.log_params(
            {
                **flatten(to_dict(cfg)),
                "model.parameters": n_params,
                "data.train_cases": len(train_ids),
                "data.val_cases": len(val_ids),
            }
        )
        meta["mlflow"] = {"run_id": tracker.run_id, "tracking_uri": tracker.uri, "experiment": cfg.mlflow.experiment}
        bar = tqdm(range(t_cfg.epochs), desc="train", unit="epoch")
        for epoch in bar:
            t0 = time.monotonic()
            lr = t_cfg.lr * lr_factor(t_cfg.optimizer, epoch / t_cfg.epochs)
            set_lr(optimizer, lr)
            loss = train_epoch(model, iter(loader), loss_fn, optimizer, device, scaler)
            row = {"epoch": epoch, "train_loss": loss, "lr": lr}
            last = epoch == t_cfg.epochs - 1
            if val_vols and (epoch % t_cfg.val_every == 0 or last):
                dice = validate(model, val_vols, inferer, k, device)
                row.update({f"val_dice_{n}": float(d) for n, d in zip(class_names, dice, strict=True)})
                row["val_dice_mean"] = float(np.nanmean(dice))
            row["epoch_seconds"] = time.monotonic() - t0
            history.append(row)
            tracker.log_metrics({k_: v for k_, v in row.items() if k_ != "epoch"}, step=epoch)
            score = row.get("val_dice_mean", -loss)
            if score > best["dice"]:
                best = {"dice": score, "epoch": epoch}
                save_model_folder(
                    t_cfg.out_dir, model, {**meta, "epoch": epoch, "val_dice_mean": row.get("val_dice_mean")}
                )
            bar.set_postfix(loss=f"{loss:.3f}", dice=f"{row.get('val_dice_mean', float('nan')):.3f}")
            elapsed = time.monotonic() - start
            if elapsed + row["epoch_seconds"] > budget_s and not last:
                logger.info("wall-clock budget of %.1f min reached after epoch %d", t_cfg.max_minutes, epoch)
                break
        io.write_csv(t_cfg.log_file, pd.DataFrame(history))
        tracker.log_metrics(
            {
                "best_val_dice_mean": best["dice"],
                "best_epoch": best["epoch"],
                "train_minutes": (time.monotonic() - start) / 60,
            }
        )
        tracker.log_artifact(t_cfg.log_file)
        tracker.log_artifact(Path(t_cfg.out_dir) / "model.json", "model")
    logger.info("best validation Dice %.4f at epoch %d", best["dice"], best["epoch"])
    return {**best, "run_id": meta["mlflow"]["run_id"]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, cfg = stage_args(__doc__, argv)
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
