"""Data-parallel plumbing: process group, rank/device, and the few collective calls training needs.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on CUDA. Single process: no group, rank 0.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (the flag itself when not distributed)."""
    t = torch.tensor([int(flag)])
    if dist.is_initialized():
        dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
