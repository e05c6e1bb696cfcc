"""The one process pool: map a function over per-case jobs in forked workers, in order, with a progress bar."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from tqdm import tqdm


def _init_worker() -> None:
    """One torch thread per worker; on Linux, die with the parent (a killed run leaves no orphans writing)."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass


def run_pool(fn: Callable[[Any], Any], jobs: Sequence, workers: int, desc: str, progress: bool = True) -> list:
    """``[fn(j) for j in jobs]`` in a fork process pool of ``workers`` (results in job order).

    Runs in this process when ``workers <= 1``, there is at most one job, or the platform cannot fork.
    """
    bar = {"total": len(jobs), "desc": desc, "unit": "case", "disable": not progress}
    if workers > 1 and len(jobs) > 1 and "fork" in mp.get_all_start_methods():
        chunk = max(1, min(8, len(jobs) // (8 * workers)))
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
            return list(tqdm(pool.map(fn, jobs, chunksize=chunk), **bar))
    return [fn(j) for j in tqdm(jobs, **bar)]
