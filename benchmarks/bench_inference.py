"""Inference benchmark: sliding-window overhead, seconds per case, peak memory on a large volume.

    python benchmarks/bench_inference.py                      # overhead + lesion + hippocampus timings
    python benchmarks/bench_inference.py --big                # + peak RSS on a 512x512x400 volume
    python benchmarks/bench_inference.py --model models/model # time (and score) a trained model folder

1. **Sliding-window overhead.** MONAI's sliding-window (3D) and slice (2D) inferers with our window
   predictor (softmax per window, Gaussian blending) against the raw network's forward pass over the
   same number of windows (same batch size, same voxels through the network), in the same process.
   ``ratio = raw seconds / sliding-window seconds`` is the share of the network's throughput that
   inference keeps (goal >= 0.8). Image voxels per second are printed as well (with overlap 0.5 each
   voxel is seen ~2**dims times, so they are lower by design).
2. **Seconds per case**, whole :class:`pipeline.inference.Predictor` path (read, preprocess, infer,
   invert, post-process), on the three pyradiomics lesion scans and on hippocampus scans, with and
   without mirroring. Against nnU-Net's ``nnUNetv2_predict`` on the same scans and threads when
   ``nnunetv2`` is importable and ``--nnunet-results``/``--nnunet-dataset`` name a trained model;
   otherwise the comparison is reported as skipped, with the reason.
3. **Peak memory** (``--big``): a synthetic 512x512x400 CT-like volume through a small 3D network, in a
   fresh subprocess per setting (float32 vs float16 blending), peak RSS from ``getrusage``.

Medians of ``--repeats`` runs after one warm-up. Random-initialised networks unless ``--model`` is
given: timings do not depend on the weights; Dice does, so it is only printed for a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.dataset import Case  # noqa: E402
from pipeline.inference import Predictor, WindowPredictor, build_inferer  # noqa: E402
from pipeline.model_folder import save_model_folder  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.preprocessing import Plan  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LESIONS = SHARED / "pyradiomics_lesions"
HIPPOCAMPUS = SHARED / "msd_hippocampus"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Counter(torch.nn.Module):
    """Counts the windows a network is called with."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.windows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.model(x)


def bench_overhead(dims: int, repeats: int) -> dict:
    """Sliding-window inference vs the raw forward pass over the same windows."""
    torch.manual_seed(0)
    width, depth = 16, 3
    model = build_model("monai_unet", dims, 1, 3, base_width=width, depth=depth).eval()
    if dims == 3:
        shape, patch, batch = (128, 128, 64), (64, 64, 32), 4
    else:
        shape, patch, batch = (256, 256, 32), (128, 128), 16
    image = torch.randn(1, 1, *shape)
    inferer = build_inferer(dims, patch, slice_axis=2, overlap=0.5, sw_batch_size=batch, blend="gaussian")
    counter = Counter(model)
    with torch.no_grad():
        inferer(image, WindowPredictor(counter))
    windows = counter.windows
    window = torch.randn(batch, 1, *patch)
    last = torch.randn(windows % batch or batch, 1, *patch)

    @torch.no_grad()
    def raw() -> None:
        for _ in range(windows // batch):
            model(window)
        if windows % batch:
            model(last)

    @torch.no_grad()
    def sliding() -> None:
        inferer(image, WindowPredictor(model))

    t_raw, t_sw = median_seconds(raw, repeats), median_seconds(sliding, repeats)
    net_voxels = windows * int(np.prod(patch))
    return {
        "model": f"{dims}D monai_unet width {width} depth {depth}",
        "volume": "x".join(map(str, shape)),
        "patch": "x".join(map(str, patch)),
        "windows": windows,
        "raw_s": t_raw,
        "sliding_s": t_sw,
        "raw_Mvox_per_s": net_voxels / t_raw / 1e6,
        "sliding_Mvox_per_s": net_voxels / t_sw / 1e6,
        "image_Mvox_per_s": int(np.prod(shape)) / t_sw / 1e6,
        "ratio": t_raw / t_sw,
    }


def random_model_folder(folder: Path, dims: int, target: tuple[float, ...], patch: list[int], labels: dict) -> Path:
    torch.manual_seed(0)
    model_cfg = {"name": "monai_unet", "base_width": 16, "depth": 3}
    k = len(labels)
    meta = {
        "model": model_cfg,
        "spatial_dims": dims,
        "in_channels": 1,
        "num_classes": k,
        "labels": {str(i): n for i, n in labels.items()},
        "plan": Plan(tuple(target), "zscore", True, labels, {0: "MRI"}).to_dict(),
        "patch_size": patch,
        "slice_axis": 2,
        "inference": {"overlap": 0.5, "sw_batch_size": 8, "blend": "gaussian", "mirror_tta": False},
    }
    net = build_model(spatial_dims=dims, in_channels=1, out_channels=k, **model_cfg)
    return save_model_folder(folder, net, meta)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, k: int) -> list[float]:
    out = []
    for c in range(1, k):
        p, r = pred == c, ref == c
        out.append(float(2 * (p & r).sum() / max(p.sum() + r.sum(), 1)))
    return out


def bench_cases(name: str, model_dir: Path, cases: list[Case], repeats: int, trained: bool) -> list[dict]:
    rows = []
    for mirror in (False, True):
        predictor = Predictor(model_dir, "cpu", mirror_tta=mirror)
        per_case, dices = [], []
        for case in cases:
            per_case.append(median_seconds(lambda c=case, p=predictor: p.predict(c), repeats))
            if trained and case.label is not None:
                ref = np.rint(np.asanyarray(nib.load(str(case.label)).dataobj)).astype(int)
                dices.append(np.mean(dice_per_class(predictor.predict(case).labels, ref, predictor.num_classes)))
        rows.append(
            {
                "data": name,
                "model": f"{predictor.spatial_dims}D",
                "mirroring": mirror,
                "cases": len(cases),
                "median_s_per_case": statistics.median(per_case),
                "max_s_per_case": max(per_case),
                "mean_dice": float(np.mean(dices)) if dices else None,
            }
        )
    return rows


def hippocampus_cases(n: int) -> list[Case]:
    images = sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:n]
    return [Case(p.name[: -len(".nii.gz")], (p,), HIPPOCAMPUS / "labelsTr" / p.name) for p in images]


def bench_nnunet(cases: list[Case], args: argparse.Namespace) -> list[dict] | str:
    """Seconds per case of ``nnUNetv2_predict`` on the same scans, or the reason it was skipped."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        return "nnunetv2 is not installed (no internet here to install it or to fetch a trained Task04 model)"
    if not (args.nnunet_results and args.nnunet_dataset):
        return "nnunetv2 is installed but --nnunet-results/--nnunet-dataset do not name a trained model"
    exe = shutil.which("nnUNetv2_predict")
    if exe is None:
        return "nnUNetv2_predict is not on PATH"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for case in cases:  # nnU-Net naming: <case>_0000.nii.gz
            (src / f"{case.case_id}_0000.nii.gz").symlink_to(case.images[0])
        env = {**os.environ, "nnUNet_results": str(args.nnunet_results), "OMP_NUM_THREADS": str(args.threads)}
        for mirror in (False, True):
            out = Path(tmp) / f"out_{mirror}"
            cmd = [exe, "-i", str(src), "-o", str(out), "-d", args.nnunet_dataset, "-c", "3d_fullres"]
            cmd += ["-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"] + ([] if mirror else ["--disable_tta"])
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            seconds = (time.perf_counter() - t0) / len(cases)
            dices = []
            for case in cases:
                pred = np.asanyarray(nib.load(str(out / f"{case.case_id}.nii.gz")).dataobj)
                ref = np.rint(np.asanyarray(nib.load(str(case.label)).dataobj)).astype(int)
                dices.append(np.mean(dice_per_class(pred, ref, 3)))
            row = {"data": "hippocampus", "model": "nnU-Net 3d_fullres", "mirroring": mirror, "cases": len(cases)}
            rows.append({**row, "median_s_per_case": seconds, "mean_dice": float(np.mean(dices))})
    return rows


def big_volume_child(half: bool, shape: tuple[int, int, int]) -> dict:
    """Runs in a fresh process: predict one synthetic CT-like volume and report peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
        body = ((x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2) < (0.45 * shape[0]) ** 2
        data = np.where(body, np.int16(40), np.int16(-1000)).astype(np.int16)
        data = np.broadcast_to(data, shape).copy()
        data[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2, shape[2] // 3 : shape[2] // 2] = 300
        path = Path(tmp) / "big.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.0, 1.0])), str(path))
        del data, body
        torch.manual_seed(0)
        model_cfg = {"name": "monai_unet", "base_width": 4, "depth": 2}
        meta = {
            "model": model_cfg,
            "spatial_dims": 3,
            "in_channels": 1,
            "num_classes": 3,
            "labels": {"0": "background", "1": "a", "2": "b"},
            "plan": Plan((0.85, 0.85, 1.0), "zscore", True, {0: "background", 1: "a", 2: "b"}, {0: "CT"}).to_dict(),
            "patch_size": [128, 128, 64],
            "slice_axis": 2,
            "inference": {"overlap": 0.25, "sw_batch_size": 2, "blend": "gaussian"},
        }
        net = build_model(spatial_dims=3, in_channels=1, out_channels=3, **model_cfg)
        folder = save_model_folder(Path(tmp) / "model", net, meta)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        predictor = Predictor(folder, "cpu", half_precision=half)
        t0 = time.perf_counter()
        pred = predictor.predict(Case("big", (path,)))
        seconds = time.perf_counter() - t0
    return {
        "shape": "x".join(map(str, shape)),
        "classes": 3,
        "half_precision": pred.half_precision,
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_predict_gb": before,
        "input_float32_gb": float(np.prod(shape)) * 4 / 2**30,
    }


def bench_big(shape: tuple[int, int, int], threads: int) -> list[dict]:
    rows = []
    for half in (False, True):
        cmd = [sys.executable, __file__, "--big-child", "--threads", str(threads), "--shape", *map(str, shape)]
        cmd += ["--half"] if half else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    widths = {k: max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(fmt(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hippocampus", type=int, default=10, help="number of hippocampus cases (0: skip)")
    parser.add_argument("--model", type=Path, default=None, help="trained 3D hippocampus model folder")
    parser.add_argument("--big", action="store_true", help="also measure peak RSS on a 512x512x400 volume")
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--nnunet-results", type=Path, default=None, help="nnUNet_results folder")
    parser.add_argument("--nnunet-dataset", default=None, help="nnU-Net dataset id or name, e.g. 4")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--big-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--half", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.big_child:
        print(json.dumps(big_volume_child(args.half, tuple(args.shape))))
        return 0

    results: dict = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    print(f"# inference benchmark: {args.threads} threads, median of {args.repeats} after a warm-up\n")
    overhead = [bench_overhead(3, args.repeats), bench_overhead(2, args.repeats)]
    results["overhead"] = overhead
    print("## sliding window vs raw forward (same windows, same process)\n" + table(overhead) + "\n")

    cases: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if LESIONS.is_dir():
            lesions = [
                Case(p.name.replace("_image.nii.gz", ""), (p,), Path(str(p).replace("_image", "_label")))
                for p in sorted(LESIONS.glob("*_image.nii.gz"))
            ]
            labels = {0: "background", 1: "lesion"}
            for dims, patch in ((2, [64, 64]), (3, [64, 64, 16])):
                folder = random_model_folder(Path(tmp) / f"lesion{dims}", dims, (0.78125, 0.78125, 6.5), patch, labels)
                cases += bench_cases("lesions", folder, lesions, args.repeats, trained=False)
        hippo = hippocampus_cases(args.hippocampus) if HIPPOCAMPUS.is_dir() and args.hippocampus else []
        if hippo:
            trained = args.model is not None
            labels = {0: "background", 1: "anterior", 2: "posterior"}
            folder = args.model or random_model_folder(Path(tmp) / "hippo", 3, (1.0, 1.0, 1.0), [40, 56, 40], labels)
            cases += bench_cases("hippocampus", folder, hippo, args.repeats, trained)
    results["cases"] = cases
    print("## seconds per case (read + preprocess + infer + invert)\n" + table(cases) + "\n")

    nnunet = bench_nnunet(hippo, args) if hippo else "no hippocampus cases"
    if isinstance(nnunet, str):
        print(f"## nnU-Net comparison skipped: {nnunet}\n")
        results["nnunet"] = {"skipped": nnunet}
    else:
        print("## nnU-Net nnUNetv2_predict, same cases and threads\n" + table(nnunet) + "\n")
        results["nnunet"] = nnunet

    if args.big:
        big = bench_big(tuple(args.shape), args.threads)
        results["big"] = big
        print("## peak memory, one large volume per fresh process\n" + table(big) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
