"""The planner's cost model against timed training steps: one step of each planned network, measured here.

For each configuration (patch, batch, input channels, output classes, full-resolution level) it builds the
network the planner would (``topology.plan_topology`` at 1 mm), times a training step (Dice + cross-entropy,
AdamW, channels-last in 3D, as the trainer runs it; median of ``--repeats`` after one warm-up) and prints the
measured seconds beside ``topology.seconds_per_epoch(..., iterations=1)`` and their ratio. Ratios, not seconds,
are what carry over between machines: the model is calibrated on the slower machines of this kind, so a ratio
below 1 means this machine is faster; what matters is that the ratios agree across configurations.

    python benchmarks/bench_cost_model.py --repeats 4
    python benchmarks/bench_cost_model.py --only brats_5 brats_2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pipeline.networks.factory import build_model
from pipeline.preprocessing import topology as topo
from pipeline.training.engine import make_loss, memory_format

BASE_WIDTH = 16
#: name -> (patch, batch, input channels, output classes, full-resolution width): planned networks of the shared sets
CONFIGS = {
    "hippocampus": ([40, 56, 40], 4, 1, 3, 0),
    "brats_5": ([96, 96, 96], 2, 2, 5, 0),  # the BraTS examples: 5 classes
    "brats_2": ([96, 96, 96], 2, 2, 2, 0),  # the same network with 2 classes
    "cube64_9": ([64, 64, 64], 2, 1, 9, 0),
    "chest_xray": ([448, 416], 2, 1, 4, 0),
    "lesions_2d": ([256, 256], 2, 1, 2, 8),
    "mri_slices": ([128, 128], 16, 3, 2, 0),
    "vessels": ([352, 352], 2, 3, 2, 8),
}


def time_step(patch: list[int], batch: int, channels: int, classes: int, full: int, repeats: int) -> float:
    """Median seconds of one training step of the planned network."""
    dims = len(patch)
    network = {**topo.plan_topology(patch, [1.0] * dims), "full_resolution_width": full}
    model = build_model(
        "monai_unet",
        dims,
        channels,
        classes,
        base_width=BASE_WIDTH,
        depth=network["depth"],
        strides=network["strides"],
        kernel_sizes=network["kernel_sizes"],
        full_resolution_width=full,
    )
    layout = memory_format(None, dims)
    model = model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = make_loss()
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, channels, *patch, generator=gen).contiguous(memory_format=layout)
    label = torch.randint(0, classes, (batch, 1, *patch), generator=gen)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image), label).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the model's machine has 2 cores)")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="configurations to time (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or CONFIGS:
        patch, batch, channels, classes, full = CONFIGS[name]
        measured = time_step(patch, batch, channels, classes, full, args.repeats)
        network = {**topo.plan_topology(patch, [1.0] * len(patch)), "full_resolution_width": full}
        estimate = topo.seconds_per_epoch(network, patch, batch, 1, BASE_WIDTH, classes)
        row = {"config": name, "patch": patch, "batch": batch, "channels": channels, "classes": classes}
        row |= {"measured_s": round(measured, 3), "estimated_s": round(estimate, 3)}
        row["ratio"] = round(measured / estimate, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
