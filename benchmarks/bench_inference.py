"""Inference benchmark: sliding-window overhead, seconds per case against nnU-Net, peak memory.

    python benchmarks/bench_inference.py                       # everything but the large volume
    python benchmarks/bench_inference.py --big                 # + peak RSS on a 512x512x400 volume
    python benchmarks/bench_inference.py --model M --nnunet-model N   # trained models: Dice as well

1. **Sliding-window overhead.** MONAI's sliding-window (3D) and slice (2D) inferers with our window
   predictor (softmax per window, Gaussian blending) against the raw network's forward pass over the
   same number of windows (same batch size, same voxels through the network), in the same process.
   ``ratio = raw seconds / sliding-window seconds`` is the share of the network's throughput that
   inference keeps (goal >= 0.8). Image voxels per second are printed too (with overlap 0.5 each voxel
   is seen ~2**dims times, so they are lower by design).
2. **Seconds per case in process**, the whole :meth:`pipeline.inference.predictor.Predictor.predict` (read,
   preprocess, infer, resample back), on the three pyradiomics lesion scans (the default study's 2D
   model) and on hippocampus scans (configs/hippocampus.yaml's 3D model), with phase timings.
3. **Against nnU-Net** (hippocampus, with and without mirroring): ``python -m pipeline.tools.predict`` and
   ``nnUNetv2_predict_from_modelfolder`` on the same scans, same threads, a fresh process per run,
   alternating; seconds per case = run time / cases. Without ``--nnunet-model`` nnU-Net's own 3d_fullres
   plan is made (fingerprint + plan on the 200 cases) and its network randomly initialised: timing does
   not depend on the weights, Dice does, so Dice is only printed when both models are trained.
   Skipped, with the reason, when nnunetv2 is not installed.
4. **Peak memory** (``--big``): a synthetic 512x512x400 CT-like volume through a small 3D network, in a
   fresh subprocess per setting (float32 vs float16 blending), peak RSS from ``getrusage`` and per phase.

Medians of ``--repeats`` runs (in-process timings after one warm-up).
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
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.cases import Case  # noqa: E402
from pipeline.inference.model_folder import save_model_folder  # noqa: E402
from pipeline.inference.predictor import Predictor  # noqa: E402
from pipeline.inference.windows import WindowPredictor, build_inferer  # noqa: E402
from pipeline.networks.factory import build_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LESIONS = SHARED / "pyradiomics_lesions"
HIPPOCAMPUS = SHARED / "msd_hippocampus"


def plan_dict(target, labels: dict[int, str]) -> dict:
    """A basic preprocessing plan as model.json stores it (z-score, crop to the body)."""
    return {
        "target_spacing": [float(t) for t in target],
        "normalization": "zscore",
        "crop_foreground": True,
        "labels": {str(k): v for k, v in labels.items()},
        "modalities": {"0": "MR"},
    }


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


def random_model_folder(
    folder: Path,
    dims: int,
    target: tuple[float, ...],
    patch: list[int],
    labels: dict,
    sw_batch_size: int = 8,
    mirror: bool = False,
) -> Path:
    """A model folder with a randomly initialised monai_unet (width 16, depth 3), as our configs train it."""
    torch.manual_seed(0)
    model_cfg = {"name": "monai_unet", "base_width": 16, "depth": 3}
    k = len(labels)
    meta = {
        "model": model_cfg,
        "spatial_dims": dims,
        "in_channels": 1,
        "num_classes": k,
        "labels": {str(i): n for i, n in labels.items()},
        "plan": plan_dict(target, labels),
        "patch_size": patch,
        "slice_axis": 2,
        "inference": {"overlap": 0.5, "sw_batch_size": sw_batch_size, "blend": "gaussian", "mirror_tta": mirror},
    }
    net = build_model(spatial_dims=dims, in_channels=1, out_channels=k, **model_cfg)
    return save_model_folder(folder, net, meta)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, k: int) -> list[float]:
    out = []
    for c in range(1, k):
        p, r = pred == c, ref == c
        out.append(float(2 * (p & r).sum() / max(p.sum() + r.sum(), 1)))
    return out


def bench_cases(name: str, model_dir: Path, cases: list[Case], repeats: int, mirrors: tuple[bool, ...]) -> list[dict]:
    """In-process seconds per case of :meth:`Predictor.predict` (median per case, then over cases)."""
    rows = []
    for mirror in mirrors:
        predictor = Predictor(model_dir, "cpu", mirror_tta=mirror)
        per_case = [median_seconds(lambda c=case, p=predictor: p.predict(c), repeats) for case in cases]
        phases: dict[str, list[float]] = {}
        for case in cases:
            for phase, sec in predictor.predict(case).timings.items():
                phases.setdefault(phase, []).append(sec)
        rows.append(
            {
                "data": name,
                "model": f"{predictor.spatial_dims}D {predictor.meta['model']['name']}",
                "mirroring": mirror,
                "cases": len(cases),
                "median_s_per_case": statistics.median(per_case),
                "max_s_per_case": max(per_case),
                **{f"{k}_s": statistics.median(v) for k, v in phases.items()},
            }
        )
    return rows


def hippocampus_cases(n: int) -> list[Case]:
    images = sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:n]
    return [Case(p.name[: -len(".nii.gz")], (p,), HIPPOCAMPUS / "labelsTr" / p.name) for p in images]


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of a command; exits with its output tail if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - t0


def nnunet_missing() -> str | None:
    """Why nnU-Net cannot be run here, or None."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        return "nnunetv2 is not installed (see the preprocessing section: pip install --no-deps nnunetv2)"
    for exe in ("nnUNetv2_predict_from_modelfolder", "nnUNetv2_extract_fingerprint", "nnUNetv2_plan_experiment"):
        if shutil.which(exe) is None:
            return f"{exe} is not on PATH"
    return None


def nnunet_random_model(work: Path, threads: int) -> Path:
    """nnU-Net's own 3d_fullres plan for the hippocampus and a randomly initialised network of that plan.

    Fingerprint and plan run on all MSD training cases (symlinked into an nnU-Net raw layout in ``work``);
    the network is built by nnU-Net's trainer from the plan and saved in its model-folder layout, so
    ``nnUNetv2_predict_from_modelfolder`` runs exactly its usual code. Timing does not depend on weights.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    raw = work / "nnUNet_raw" / "Dataset004_Hippocampus"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for entry in meta["training"]:
        image, label = (HIPPOCAMPUS / entry["image"]).resolve(), (HIPPOCAMPUS / entry["label"]).resolve()
        case = image.name[: -len(".nii.gz")]
        (raw / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(image)
        (raw / "labelsTr" / f"{case}.nii.gz").symlink_to(label)
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {v: int(k) for k, v in meta["labels"].items()},
        "numTraining": len(meta["training"]),
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset))
    env = {**os.environ, **{f"nnUNet_{k}": str(work / f"nnUNet_{k}") for k in ("raw", "preprocessed", "results")}}
    run(["nnUNetv2_extract_fingerprint", "-d", "4", "-np", str(threads)], env)
    run(["nnUNetv2_plan_experiment", "-d", "4"], env)
    pre = work / "nnUNet_preprocessed" / "Dataset004_Hippocampus"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(manager, config, 1, 3, enable_deep_supervision=False)
    folder = work / "nnunet_model"
    (folder / "fold_0").mkdir(parents=True)
    checkpoint = {
        "network_weights": net.state_dict(),
        "init_args": {"configuration": "3d_fullres"},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    return folder


def output_name(system: str, case: Case) -> str:
    """nnU-Net drops the channel suffix of ``<case>_0000.nii.gz``; ours keeps the input's name."""
    return f"{case.case_id}.nii.gz" if system == "nnU-Net" else f"{case.case_id}_0000.nii.gz"


def bench_against_nnunet(cases: list[Case], ours: Path, args: argparse.Namespace, work: Path) -> list[dict] | str:
    """End to end (a fresh process per run: imports, model load, all cases), ours and nnU-Net alternating."""
    reason = nnunet_missing() if args.nnunet_model is None else None
    if reason:
        return reason
    nnunet = args.nnunet_model or nnunet_random_model(work, args.threads)
    src = work / "scans"
    src.mkdir()
    for case in cases:  # nnU-Net's naming; ours takes any file name
        (src / f"{case.case_id}_0000.nii.gz").symlink_to(case.images[0].resolve())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    trained = args.model is not None and args.nnunet_model is not None
    rows = []
    for mirror in (False, True):
        times: dict[str, list[float]] = {"ours": [], "nnU-Net": []}
        outs = {name: work / f"out_{name}_{mirror}" for name in times}
        for _ in range(args.repeats):
            for name in times:
                shutil.rmtree(outs[name], ignore_errors=True)
                if name == "ours":
                    cmd = [sys.executable, "-m", "pipeline.tools.predict", "--model", str(ours), "--input", str(src)]
                    cmd += ["--output", str(outs[name]), "--threads", str(args.threads)]
                    cmd += ["--mirror" if mirror else "--no-mirror"]
                else:
                    cmd = ["nnUNetv2_predict_from_modelfolder", "-i", str(src), "-o", str(outs[name])]
                    cmd += ["-m", str(nnunet), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"]
                    cmd += ["--disable_progress_bar"] + ([] if mirror else ["--disable_tta"])
                times[name].append(run(cmd, env) / len(cases))
                written = {p.name for p in outs[name].glob("*.nii.gz")}
                missing = [c.case_id for c in cases if output_name(name, c) not in written]
                if missing:  # nnU-Net exits 0 even when it predicted nothing
                    sys.exit(f"{name} wrote no prediction for {missing} ({' '.join(cmd)})")
        for name, values in times.items():
            row = {"system": name, "mirroring": mirror, "cases": len(cases), "s_per_case": statistics.median(values)}
            if trained:
                dices = []
                for case in cases:
                    pred = np.asanyarray(nib.load(str(outs[name] / output_name(name, case))).dataobj)
                    ref = np.rint(np.asanyarray(nib.load(str(case.label)).dataobj)).astype(int)
                    dices.append(np.mean(dice_per_class(np.asarray(pred), ref, 3)))
                row["mean_dice"] = float(np.mean(dices))
            rows.append(row)
        rows[-2]["ours/nnU-Net"] = rows[-2]["s_per_case"] / rows[-1]["s_per_case"]
    return rows


def current_rss_gb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 2**20


class RssSampler(threading.Thread):
    """Samples this process's resident set size (Linux /proc) every ``every`` seconds."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), current_rss_gb()))
            time.sleep(self.every)

    def peaks(self, start: float, phases: dict[str, float]) -> dict[str, float]:
        """Peak RSS (GB) within each phase, the phases following each other from ``start``."""
        out, t = {}, start
        for name, seconds in phases.items():
            inside = [gb for when, gb in self.samples if t <= when <= t + seconds]
            out[f"peak_{name}_gb"] = max(inside, default=float("nan"))
            t += seconds
        return out


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
            "plan": plan_dict((0.85, 0.85, 1.0), {0: "background", 1: "a", 2: "b"}),
            "patch_size": [128, 128, 64],
            "slice_axis": 2,
            "inference": {"overlap": 0.25, "sw_batch_size": 2, "blend": "gaussian"},
        }
        net = build_model(spatial_dims=3, in_channels=1, out_channels=3, **model_cfg)
        folder = save_model_folder(Path(tmp) / "model", net, meta)
        before = current_rss_gb()
        predictor = Predictor(folder, "cpu", half_precision=half)
        sampler = RssSampler()
        sampler.start()
        t0 = time.monotonic()
        pred = predictor.predict(Case("big", (path,)))
        seconds = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
    return {
        "shape": "x".join(map(str, shape)),
        "classes": 3,
        "half_precision": pred.half_precision,
        "seconds": seconds,
        **{f"{k}_s": v for k, v in pred.timings.items()},
        "input_float32_gb": float(np.prod(shape)) * 4 / 2**30,
        "rss_before_predict_gb": before,
        **sampler.peaks(t0, pred.timings),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
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
    parser.add_argument("--model", type=Path, default=None, help="our trained 3D hippocampus model folder")
    parser.add_argument("--big", action="store_true", help="also measure peak RSS on a 512x512x400 volume")
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--nnunet-cases", type=int, default=5, help="hippocampus cases for nnU-Net (0: skip)")
    parser.add_argument("--nnunet-model", type=Path, default=None, help="trained nnU-Net model folder (fold_0)")
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
    hippo = hippocampus_cases(args.hippocampus) if HIPPOCAMPUS.is_dir() and args.hippocampus else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if LESIONS.is_dir():  # the default study's model: 2D monai_unet, 64x64 patches; planned spacing
            lesions = [Case(p.name.replace("_image.nii.gz", ""), (p,)) for p in sorted(LESIONS.glob("*_image.nii.gz"))]
            labels = {0: "background", 1: "lesion"}
            folder = random_model_folder(work / "lesion", 2, (0.78125, 0.78125, 6.5), [64, 64], labels, 16)
            cases += bench_cases("lesions", folder, lesions, args.repeats, (False,))
        if hippo:  # configs/hippocampus.yaml: 3D monai_unet, 40x56x40 patches, 1 mm
            labels = {0: "background", 1: "anterior", 2: "posterior"}
            ours = args.model or random_model_folder(work / "hippo", 3, (1.0, 1.0, 1.0), [40, 56, 40], labels, 4)
            cases += bench_cases("hippocampus", ours, hippo, args.repeats, (False, True))
        results["cases"] = cases
        print("## seconds per case, in process (read + preprocess + infer + resample)\n" + table(cases) + "\n")

        if hippo and args.nnunet_cases:
            compared = bench_against_nnunet(hippo[: args.nnunet_cases], ours, args, work)
            if isinstance(compared, str):
                print(f"## nnU-Net comparison skipped: {compared}\n")
                results["nnunet"] = {"skipped": compared}
            else:
                note = "trained models" if "mean_dice" in compared[0] else "random weights (timing only, no Dice)"
                print(f"## hippocampus, end to end per run / cases, vs nnUNetv2_predict ({note})\n{table(compared)}\n")
                results["nnunet"] = compared

    if args.big:
        big = bench_big(tuple(args.shape), args.threads)
        results["big"] = big
        print("## peak memory, one large volume per fresh process\n" + table(big) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
