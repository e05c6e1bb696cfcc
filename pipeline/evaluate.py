"""Stage: predict every test case in its own geometry and score it against its reference label.

Predictions come from :class:`pipeline.inference.Predictor`, the same code path as ``pipeline.predict``,
so what is evaluated is what a user gets. ``metrics/per_case.csv`` (one row per case and class) is
the source of truth; ``metrics/summary.json`` and MLflow are fed from it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import io
from pipeline.config import Config, stage_args
from pipeline.dataset import read_dataset
from pipeline.inference import Predictor
from pipeline.metrics import EmptyPolicy, case_metrics, summarize
from pipeline.model_folder import sha256
from pipeline.sampling import read_samples
from pipeline.tracking import run

logger = logging.getLogger(__name__)


def evaluate(cfg: Config) -> dict:
    """Predict and score the test split; write the per-case table and the summary; log to MLflow."""
    e = cfg.evaluate
    info = read_dataset(cfg.data.root, cfg.data.layout, cfg.data.manifest)
    samples = read_samples(cfg.sample.out_dir)
    test_ids = set(samples.loc[samples.split == "test", "case_id"])
    cases = [c for c in info.cases if c.case_id in test_ids]
    if not cases:
        raise SystemExit("evaluate: the split has no test cases; raise sample.test_fraction")
    predictor = Predictor(cfg.train.out_dir)
    labels = {int(k): v for k, v in predictor.meta["labels"].items()}
    ep = e.empty_policy
    policy = EmptyPolicy(ep.both_empty, ep.ref_empty_only, ep.pred_empty_only)
    rows = []
    for case in tqdm(cases, desc="evaluate", unit="case"):
        t0 = time.monotonic()
        pred, reference = predictor.predict_case(case)
        seconds = time.monotonic() - t0
        io.save_like(pred, reference, Path(e.predictions_dir) / f"{case.case_id}.nii.gz")
        ref_img = nib.load(str(case.label))
        ref = np.rint(np.asanyarray(ref_img.dataobj)).astype(np.int16)
        spacing = [float(z) for z in ref_img.header.get_zooms()[:3]]
        provenance = {
            "case_id": case.case_id,
            "image_file": case.images[0].name,
            "image_sha256": sha256(case.images[0]),
            "label_file": case.label.name,
            "label_sha256": sha256(case.label),
            "predict_seconds": round(seconds, 3),
        }
        for m in case_metrics(pred, ref, spacing, labels, e.nsd_tolerance_mm, policy):
            rows.append({**provenance, **m})
    per_case = pd.DataFrame(rows)
    summary = summarize(per_case, n_bootstrap=e.n_bootstrap, seed=e.seed, policy=policy)
    summary["n_cases"] = len(cases)
    metrics_dir = Path(e.metrics_dir)
    io.write_csv(metrics_dir / "per_case.csv", per_case)
    io.write_json(metrics_dir / "summary.json", summary)
    _log_to_mlflow(cfg, predictor.meta, per_case, summary, metrics_dir)
    logger.info("mean Dice %.4f over %d test cases", summary["mean_dice"], len(cases))
    return summary


def summary_metrics(summary: dict) -> dict[str, float]:
    """Flatten the summary into MLflow metric names, e.g. ``test.organ.dice.mean``."""
    out = {"test.mean_dice": summary["mean_dice"]}
    for cls, stats in summary.items():
        if cls in ("bootstrap", "empty_policy") or not isinstance(stats, dict):
            continue
        for metric, values in stats.items():
            for stat, value in values.items():
                if isinstance(value, (int, float)):
                    out[f"test.{cls}.{metric}.{stat}"] = float(value)
    return out


def _log_to_mlflow(cfg: Config, meta: dict, per_case: pd.DataFrame, summary: dict, metrics_dir: Path) -> None:
    run_id = meta.get("mlflow", {}).get("run_id")
    with run(cfg.mlflow, run_id=run_id, run_name="evaluate") as tracker:
        tracker.log_metrics(summary_metrics(summary))
        tracker.set_tags({"evaluate.empty_policy": json.dumps(summary.get("empty_policy"))})
        tracker.log_artifact(metrics_dir / "per_case.csv", "evaluation")
        tracker.log_artifact(metrics_dir / "summary.json", "evaluation")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, cfg = stage_args(__doc__, argv)
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
