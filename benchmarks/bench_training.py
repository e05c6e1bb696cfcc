"""Training throughput: our data pipeline + loop against the same network fed pre-made tensors.

Both run side by side in one process, alternating, on volumes shaped like the hippocampus crops
(``--shape``). Prints samples per second of each and their ratio (median over repeats); a ratio near
1 means patch sampling and batch augmentation add no overhead to the training step.

    python benchmarks/bench_training.py --mode 3d --repeats 3
    python benchmarks/bench_training.py --mode 2d --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipeline.networks.factory import build_model
from pipeline.sampling.augment import BatchAugment
from pipeline.sampling.locations import class_locations
from pipeline.sampling.patches import class_ratios
from pipeline.training.engine import epoch_loader, make_loss, make_optimizer, train_epoch


def make_volumes(n: int, shape: tuple[int, int, int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vols = []
    for _ in range(n):
        label = np.zeros(shape, np.uint8)
        c = [s // 2 for s in shape]
        label[c[0] - 6 : c[0] + 6, c[1] - 10 : c[1], c[2] - 6 : c[2] + 6] = 1
        label[c[0] - 6 : c[0] + 6, c[1] : c[1] + 10, c[2] - 6 : c[2] + 6] = 2
        image = (rng.normal(size=shape) + label).astype(np.float32)[None]
        locs = class_locations(label, 3, rng)
        vols.append({"image": image, "label": label[None], "locations": [locs[f"c{k}"] for k in range(3)]})
    return vols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["2d", "3d"], default="3d")
    parser.add_argument("--shape", type=int, nargs=3, default=[36, 50, 36])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = 3 if args.mode == "3d" else 2
    patch, batch = ((40, 56, 40), 4) if dims == 3 else ((64, 64), 32)
    vols = make_volumes(16, tuple(args.shape))
    ratios, axis = class_ratios(3, 0.5), (2 if dims == 2 else None)
    augment = BatchAugment(dims)
    model = build_model("monai_unet", dims, 1, 3, base_width=16, depth=3)
    loss_fn, opt = make_loss(), make_optimizer(model, "adamw", 1e-3, 1e-5)
    device = torch.device("cpu")

    # pre-made tensors: the same shapes our loader yields, made before timing
    premade = [next(iter(epoch_loader(vols, patch, ratios, e, 0, batch, 1, 0, axis))) for e in range(args.iters)]
    train_epoch(model, premade[:2], loss_fn, opt, device)  # warm-up

    ours, raw = [], []
    for r in range(args.repeats):
        loader = epoch_loader(vols, patch, ratios, 100 + r, 0, batch, args.iters, args.workers, axis)
        t0 = time.perf_counter()
        train_epoch(model, loader, loss_fn, opt, device, augment=augment, generator=torch.Generator().manual_seed(r))
        ours.append(batch * args.iters / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        train_epoch(model, premade, loss_fn, opt, device)
        raw.append(batch * args.iters / (time.perf_counter() - t0))
    ratios = [o / p for o, p in zip(ours, raw, strict=True)]
    print(f"mode {args.mode}, patch {patch}, batch {batch}, workers {args.workers}, threads {torch.get_num_threads()}")
    print(f"our loop      : {statistics.median(ours):8.2f} samples/s (median of {args.repeats})")
    print(f"pre-made input: {statistics.median(raw):8.2f} samples/s")
    print(f"ratio (ours / pre-made): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
