"""Training and validation loops (no file paths in here)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import Inferer
from monai.losses import DiceCELoss
from monai.transforms import Compose
from torch.utils.data import RandomSampler

from pipeline.inference import predict_probabilities
from pipeline.transforms import augmentation, training_sampler

logger = logging.getLogger(__name__)


def make_loss() -> torch.nn.Module:
    """Dice + cross-entropy on softmax outputs, labels as class indices."""
    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; allowed: sgd, adamw")


def lr_factor(optimizer_name: str, progress: float) -> float:
    """Poly decay (SGD) or cosine (AdamW) as a function of training progress in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if optimizer_name == "sgd":
        return (1.0 - progress) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_loader(
    volumes: Sequence[dict],
    patch_size: Sequence[int],
    num_classes: int,
    foreground_ratio: float,
    spatial_dims: int,
    slice_axis: int,
    batch_size: int,
    iters_per_epoch: int,
    augment: bool,
    num_workers: int,
    anisotropic: bool,
    seed: int,
) -> DataLoader:
    """An endless-feeling loader: ``iters_per_epoch`` batches of random patches per epoch."""
    chain = training_sampler(patch_size, num_classes, foreground_ratio, slice_axis if spatial_dims == 2 else None)
    if augment:
        chain += augmentation(spatial_dims, anisotropic)
    transform = Compose(chain)
    transform.set_random_state(seed=seed)
    dataset = Dataset(list(volumes), transform)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * iters_per_epoch, generator=generator)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0
    )


def train_epoch(
    model: torch.nn.Module,
    batches: Iterator[dict],
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over ``batches``; returns the mean loss."""
    model.train()
    losses = []
    for batch in batches:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=scaler is not None):
            loss = loss_fn(model(image), label)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def dice_per_class(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> np.ndarray:
    """Dice of each foreground class between two label maps; NaN where both are empty."""
    out = np.full(num_classes - 1, np.nan)
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        denom = int(p.sum() + r.sum())
        if denom:
            out[k - 1] = 2.0 * int((p & r).sum()) / denom
    return out


@torch.no_grad()
def validate(
    model: torch.nn.Module, volumes: Sequence[dict], inferer: Inferer, num_classes: int, device: torch.device
) -> np.ndarray:
    """Mean Dice per foreground class over whole validation volumes (in preprocessed space)."""
    model.eval()
    scores = []
    for vol in volumes:
        image = torch.as_tensor(vol["image"])[None].to(device)
        probs = predict_probabilities(model, image, inferer)
        pred = torch.argmax(probs, dim=1)[0].cpu()
        scores.append(dice_per_class(pred, torch.as_tensor(vol["label"])[0], num_classes))
    return np.nanmean(np.stack(scores), axis=0) if scores else np.full(num_classes - 1, np.nan)
