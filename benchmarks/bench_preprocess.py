"""Preprocessing wall time: ours (``python -m pipeline.stages.preprocess``) against nnU-Net v2's
``nnUNetv2_plan_and_preprocess -c 3d_fullres`` on the same MSD dataset, with the same worker count.

Both are run as separate processes (imports included), alternating, each into fresh temporary folders
(nothing is reused between repeats: our fingerprint cache and per-case markers start empty). nnU-Net
gets its raw layout (``Dataset004_Hippocampus``: ``imagesTr/<case>_0000.nii.gz``, ``labelsTr``,
``dataset.json``) built from symlinks in a temporary folder; ``nnUNet_raw``, ``nnUNet_preprocessed``
and ``nnUNet_results`` point at temporary folders. Prints every run, the medians and ours / nnU-Net.

    pip install --no-deps nnunetv2 dynamic-network-architectures   # see benchmarks/README.md
    python benchmarks/bench_preprocess.py --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "msd_hippocampus"


def nnunet_raw(source: Path, raw_root: Path, dataset_id: int, name: str) -> Path:
    """nnU-Net v2 raw layout of an MSD folder, made of symlinks (no data copied)."""
    meta = json.loads((source / "dataset.json").read_text())
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for entry in meta["training"]:
        image, label = (source / entry["image"]).resolve(), (source / entry["label"]).resolve()
        case = image.name.removesuffix(".nii.gz")
        (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(image)
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(label)
    modality = meta.get("modality", {"0": "MRI"})
    converted = {
        "channel_names": {str(k): v for k, v in modality.items()},
        "labels": {v: int(k) for k, v in meta["labels"].items()},
        "numTraining": len(meta["training"]),
        "file_ending": ".nii.gz",
        "name": name,
    }
    (folder / "dataset.json").write_text(json.dumps(converted, indent=1))
    return folder


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Wall time of ``cmd`` (seconds); its output goes to ``log``; exits with the log tail on failure."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        sys.exit(f"{' '.join(cmd)} failed with status {proc.returncode}:\n{tail}")
    return seconds


def ours(data: Path, work: Path, workers: int, env: dict[str, str]) -> float:
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    config = work / "ours.yaml"
    params = {
        "data": {"root": str(data), "layout": "msd"},
        "preprocess": {"out_dir": str(out), "workers": workers, "target_spacing": None},
    }
    config.write_text(yaml.safe_dump(params))
    return run([sys.executable, "-m", "pipeline.stages.preprocess", "--config", str(config)], env, work / "ours.log")


def nnunet(work: Path, dataset_id: int, workers: int, env: dict[str, str], verify: bool) -> float:
    pre, results = work / "nnUNet_preprocessed", work / "nnUNet_results"
    shutil.rmtree(pre, ignore_errors=True)
    pre.mkdir()
    results.mkdir(exist_ok=True)
    env = {**env, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(pre)}
    env["nnUNet_results"] = str(results)
    exe = shutil.which("nnUNetv2_plan_and_preprocess")
    if exe is None:
        sys.exit("nnUNetv2_plan_and_preprocess not found: install the bench extra (see benchmarks/README.md)")
    cmd = [exe, "-d", str(dataset_id), "-c", "3d_fullres", "-np", str(workers), "-npfp", str(workers), "--no_pbar"]
    if verify:
        cmd.append("--verify_dataset_integrity")
    return run(cmd, env, work / "nnunet.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MSD dataset folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="processes, for both (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating (default: %(default)s)")
    parser.add_argument("--dataset-id", type=int, default=4)
    parser.add_argument("--name", default="Hippocampus")
    parser.add_argument("--verify", action="store_true", help="nnU-Net: also --verify_dataset_integrity")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    times: dict[str, list[float]] = {"ours": [], "nnunet": []}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        nnunet_raw(args.data, work / "nnUNet_raw", args.dataset_id, args.name)
        for i in range(args.repeats):
            order = ("ours", "nnunet") if i % 2 == 0 else ("nnunet", "ours")
            for who in order:
                load = os.getloadavg()[0]
                if who == "ours":
                    seconds = ours(args.data, work, args.workers, env)
                else:
                    seconds = nnunet(work, args.dataset_id, args.workers, env, args.verify)
                times[who].append(seconds)
                print(f"run {i + 1} {who:>6}: {seconds:7.2f} s   (1-min load average before: {load:.2f})", flush=True)
        n_ours = len(list((work / "ours" / "images").glob("*.npy")))
        n_nnunet = len(list((work / "nnUNet_preprocessed").glob("Dataset*/*_3d_fullres/*.pkl")))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["nnunet"]
    print(f"\ndataset {args.data}, {args.workers} workers, {os.cpu_count()} cores")
    print(f"cases written by the last runs: ours {n_ours}, nnU-Net {n_nnunet}")
    print(f"ours   (python -m pipeline.stages.preprocess):                    median {med['ours']:7.2f} s")
    print(f"nnU-Net (nnUNetv2_plan_and_preprocess -c 3d_fullres):      median {med['nnunet']:7.2f} s")
    print(f"ratio ours / nnU-Net: {ratio:.3f}  (goal <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps({"times": times, "median": med, "ratio": ratio, "workers": args.workers}))


if __name__ == "__main__":
    main()
