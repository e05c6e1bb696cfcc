"""Training and validation loops (no file paths in here)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader, Dataset, get_track_meta, set_track_meta
from monai.inferers import Inferer
from monai.losses import DiceCELoss
from monai.transforms import Compose
from torch.utils.data import DistributedSampler, SequentialSampler

from pipeline.augment import BatchAugment
from pipeline.inference import predict_probabilities
from pipeline.transforms import training_sampler

logger = logging.getLogger(__name__)


def make_loss(include_background: bool = True, batch: bool = False) -> torch.nn.Module:
    """Dice + cross-entropy on softmax outputs, labels as class indices.

    ``include_background=False`` leaves the background channel out of the Dice term (the
    cross-entropy always covers every class); ``batch=True`` computes one Dice per class over
    the whole batch, so a patch with little or no foreground does not get a noisy Dice of its own.
    """
    return DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        include_background=include_background,
        batch=batch,
        squared_pred=False,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )


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


def training_transform(
    patch_size: Sequence[int], num_classes: int, foreground_ratio: float, spatial_dims: int, slice_axis: int
) -> Compose:
    """Random patch sampling from cached preprocessed volumes (augmentation is applied per batch)."""
    return Compose(
        training_sampler(patch_size, num_classes, foreground_ratio, slice_axis if spatial_dims == 2 else None)
    )


def memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    """The tensor layout for a network and its batches: channels-last (2D or 3D) or the default."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """One seed per (run seed, epoch, rank): a resumed run draws exactly what an uninterrupted one would."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)


def epoch_loader(
    volumes: Sequence[dict],
    transform: Compose,
    epoch: int,
    seed: int,
    batch_size: int,
    iters_per_epoch: int,
    num_workers: int,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """``iters_per_epoch`` batches of random patches; cases drawn with replacement, sharded across ranks."""
    torch.manual_seed(epoch_seed(seed, epoch, rank))
    transform.set_random_state(seed=epoch_seed(seed, epoch, rank))
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    picks = rng.integers(0, len(volumes), size=batch_size * iters_per_epoch * world)
    dataset = Dataset([volumes[i] for i in picks], transform)
    sampler = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        if world > 1
        else SequentialSampler(dataset)
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    augment: BatchAugment | None = None,
    generator: torch.Generator | None = None,
    layout: torch.memory_format = torch.contiguous_format,
) -> float:
    """One pass over ``loader`` (augmenting each batch); returns the mean loss (averaged over ranks under DDP).

    ``layout`` is the memory format batches are given to the model in (match the model's own, see
    :func:`memory_format`).
    """
    model.train()
    total, count = 0.0, 0
    tracking = get_track_meta()
    set_track_meta(False)  # plain tensors: MONAI's metadata tracking is pure overhead while sampling patches
    try:
        for batch in loader:
            image, label = torch.as_tensor(batch["image"]), torch.as_tensor(batch["label"])
            if augment is not None:
                image, label = augment(image, label, generator or torch.default_generator)
            image = image.to(device, non_blocking=True).contiguous(memory_format=layout)
            label = label.to(device, non_blocking=True)
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
            total += float(loss.detach())
            count += 1
    finally:
        set_track_meta(tracking)
    sums = torch.tensor([total, count], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(sums)
    return float(sums[0] / max(sums[1], 1))


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
    model: torch.nn.Module,
    volumes: Sequence[dict],
    inferer: Inferer,
    num_classes: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> np.ndarray:
    """Mean Dice per foreground class over whole validation volumes (in preprocessed space).

    Under DDP each rank scores its share of the volumes and the sums are reduced across ranks.
    """
    model.eval()
    sums = torch.zeros(2, num_classes - 1, dtype=torch.float64)
    for vol in volumes[rank::world]:
        image = torch.as_tensor(np.asarray(vol["image"]))[None].to(device)
        probs = predict_probabilities(model, image, inferer)
        pred = torch.argmax(probs, dim=1)[0].cpu()
        dice = dice_per_class(pred, torch.as_tensor(np.asarray(vol["label"]))[0], num_classes)
        valid = ~np.isnan(dice)
        sums[0, valid] += torch.as_tensor(dice[valid])
        sums[1, valid] += 1
    if dist.is_initialized():
        dist.all_reduce(sums)
    return (sums[0] / sums[1]).numpy()  # NaN where no volume had the class
