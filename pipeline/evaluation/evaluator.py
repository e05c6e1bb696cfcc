"""Stage: predict every test case in its own geometry and score it against its reference label.

Predictions come from :class:`pipeline.inference.predictor.Predictor`, the same code path as ``pipeline.tools.predict``,
so what is evaluated is what a user gets. ``metrics/per_case.csv`` (one row per case and class) is
the source of truth; ``metrics/summary.json``, ``metrics/per_case_dice.csv`` (DVC plot),
``metrics/report.html`` and MLflow are fed from it. MLflow receives, on the run that trained the
model: the summary as metrics, the per-case table (table artifact and CSV), the summary, the report
and the lineage tags of :func:`pipeline.evaluation.lineage.lineage_tags`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.config import Config, EvaluateConfig, fold_name, to_dict
from pipeline.core import io
from pipeline.core.cases import Case
from pipeline.core.dataset import read_configured
from pipeline.core.labels import read_label, stored_values, to_classes
from pipeline.core.readers import read_array
from pipeline.core.splits import read_splits
from pipeline.evaluation.compare import CSV_ARTIFACT, TABLE_ARTIFACT
from pipeline.evaluation.ensemble import (
    ENSEMBLE_COLUMNS,
    ENSEMBLE_FILE,
    chosen_postprocessing,
    ensemble_summary,
    ensemble_vs_single,
    fold_config,
    fold_model_dirs,
)
from pipeline.evaluation.lineage import lineage_tags
from pipeline.evaluation.methods import results_sections
from pipeline.evaluation.metrics import SUMMARY_KEYS, EmptyPolicy, case_metrics, group_dice, summarize
from pipeline.evaluation.plots import Overlay
from pipeline.evaluation.report import case_ranking, pick_cases, write_report
from pipeline.evaluation.tracking import public_config, register_model, run
from pipeline.inference.masks import save_mask
from pipeline.inference.mlflow_model import POSTPROCESSED, log_model_folder
from pipeline.inference.model_folder import POSTPROCESSING, sha256
from pipeline.inference.predictor import Predictor

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
DICE_PLOT_FILE = "per_case_dice.csv"


class CasePredictor(Protocol):
    """What evaluation needs from a predictor (:class:`pipeline.inference.predictor.Predictor` in the stage)."""

    meta: dict
    device: Any

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]: ...


def label_values(meta: dict) -> tuple[int, ...]:
    """The stored label value of each class (empty: the classes themselves), from a model's metadata."""
    return tuple(meta.get("plan", {}).get("label_values") or ())


def predict_cases(
    cases: Sequence[Case], predictor: CasePredictor, desc: str = "evaluate"
) -> Iterator[tuple[Case, np.ndarray, nib.Nifti1Image, float]]:
    """``(case, prediction, reference image, seconds)`` per case, predicted from its raw scan."""
    for case in tqdm(cases, desc=desc, unit="case"):
        t0 = time.monotonic()
        pred, reference = predictor.predict_case(case)
        yield case, pred, reference, round(time.monotonic() - t0, 3)


def score_case(
    case: Case, pred: np.ndarray, labels: dict[int, str], values: Sequence[int], e: EvaluateConfig, extra: dict
) -> tuple[list[dict], bool]:
    """One row per class of one predicted case (:func:`case_metrics`) after its provenance and ``extra`` columns
    (group, fold, predict_seconds, ...); and whether the case is a 2D picture without physical spacing."""
    ref_data, ref_header = read_label(case.label, stored_values(len(labels), values), like=case.images[0])
    ref = to_classes(ref_data, tuple(values)).reshape(pred.shape)
    spacing = [float(z) for z in ref_header.spacing[:3]]
    picture = not ref_header.physical_spacing
    if picture and pred.ndim == 3 and pred.shape[2] == 1:  # 2D metrics (contours, not slabs), in pixels
        pred, ref, spacing = pred[..., 0], ref[..., 0], spacing[:2]
    provenance = {**case_provenance(case), **extra}
    metrics = case_metrics(pred, ref, spacing, labels, e.nsd_tolerance_mm, empty_policy(e))
    return [{**provenance, **m} for m in metrics], picture


def score_cases(
    cases: Sequence[Case],
    predictor: CasePredictor,
    e: EvaluateConfig,
    predictions_dir: str | Path | None = None,
    desc: str = "evaluate",
) -> tuple[pd.DataFrame, dict[str, Path], bool]:
    """Predict each case from its raw scan and score it: the per-case table (one row per case and class; a
    ``group`` column when any case has one), the masks written (when ``predictions_dir`` is given) and whether
    any case is a 2D picture without physical spacing."""
    labels = {int(k): v for k, v in predictor.meta["labels"].items()}
    values = label_values(predictor.meta)
    grouped = any(c.group for c in cases)
    rows: list[dict] = []
    written: dict[str, Path] = {}
    pictures = False
    for case, pred, reference, seconds in predict_cases(cases, predictor, desc):
        if predictions_dir is not None:
            written[case.case_id] = save_mask(pred, reference, case.images[0], predictions_dir, case.case_id, values)
        extra = {**({"group": case.group or ""} if grouped else {}), "predict_seconds": seconds}
        case_rows, picture = score_case(case, pred, labels, values, e, extra)
        rows += case_rows
        pictures |= picture
    return pd.DataFrame(rows), written, pictures


def evaluate(cfg: Config, predictor: CasePredictor | None = None) -> dict:
    """Predict and score the test split; write the per-case table, summary and report; log to MLflow.

    ``predictor`` defaults to the trained fold model folders (:func:`~pipeline.evaluation.ensemble.fold_model_dirs`):
    one model, or with several folds their ensemble, then also scored beside the first fold alone. Tests pass a
    stand-in.
    """
    e = cfg.evaluate
    info = read_configured(cfg.data)
    test_ids = set(read_splits(cfg.split.file)["test"])
    cases = [c for c in info.cases if c.case_id in test_ids]
    if not cases:
        raise SystemExit("evaluate: the split has no test cases; raise split.test_fraction")
    folders = fold_model_dirs(cfg)
    if predictor is None:
        predictor = Predictor([folder for _, folder in folders], keep_largest=chosen_postprocessing(cfg))
    labels = {int(k): v for k, v in predictor.meta["labels"].items()}
    per_case, written, pictures = score_cases(cases, predictor, e, e.predictions_dir)
    policy = empty_policy(e)
    summary = summarize(per_case, n_bootstrap=e.n_bootstrap, seed=e.seed, policy=policy)
    summary["n_cases"] = len(cases)
    per_group = group_dice(per_case, policy, e.n_bootstrap, e.seed)
    if per_group is not None:
        summary["per_group"] = per_group
    summary["physical_spacing"] = not pictures  # False: distances in pixels (see the report)
    metrics_dir = Path(e.metrics_dir)
    ensemble = _against_single_fold(cfg, cases, per_case, folders, predictor.meta)
    if ensemble is not None:
        summary["ensemble"] = ensemble_summary(ensemble, [f for f, _ in folders], folders[0][0])
    tags = lineage_tags(cfg, device=str(predictor.device), model_meta=predictor.meta)
    ranking = case_ranking(per_case).set_index("case_id")["mean_dice"]
    by_id = {c.case_id: c for c in cases}
    stored = stored_values(len(labels), label_values(predictor.meta))
    overlays = (  # a generator: the report draws one case at a time
        load_overlay(by_id[cid], written[cid], role, float(ranking[cid]), stored)
        for role, cid in pick_cases(per_case).items()
    )
    first = fold_config(cfg, folders[0][0])
    write_results(
        metrics_dir,
        per_case,
        summary,
        config=public_config(to_dict(cfg)),
        lineage=tags,
        train_log=read_train_log(first.train.log_path),
        overlays=overlays,
        class_names=labels,
        title=f"Evaluation of {len(cases)} test cases ({info.name})",
        settings=predictor.meta.get("settings"),
        training=predictor.meta.get("training"),
        extra_sections=lambda: results_sections(cfg, [f for _, f in folders]),
    )
    _log_to_mlflow(cfg, predictor.meta, per_case, summary, metrics_dir, tags, folders[0][1])
    logger.info("mean Dice %.4f over %d test cases", summary["mean_dice"], len(cases))
    if per_group is not None and per_group["mean_dice"] is not None:
        logger.info("mean Dice %.4f over %d groups (pooled per group)", per_group["mean_dice"], per_group["n_groups"])
    return summary


def _against_single_fold(
    cfg: Config, cases: Sequence[Case], per_case: pd.DataFrame, folders: list[tuple[Any, Path]], meta: dict
) -> pd.DataFrame | None:
    """With an ensemble of folds: the first fold alone on the same cases, compared case by case (written to
    ``ensemble_vs_single.csv``); else None (and the file holds only its header)."""
    path = Path(cfg.evaluate.metrics_dir) / ENSEMBLE_FILE
    if len(folders) < 2 or "ensemble" not in meta:
        io.write_csv(path, pd.DataFrame(columns=list(ENSEMBLE_COLUMNS)))  # a DVC output either way (never empty)
        return None
    fold, folder = folders[0]
    alone = Predictor(folder, keep_largest=chosen_postprocessing(cfg))
    single = score_cases(cases, alone, cfg.evaluate, desc=f"evaluate {fold_name(fold)} alone")[0]
    table = ensemble_vs_single(per_case, single, cfg.evaluate, [f for f, _ in folders], fold)
    io.write_csv(path, table)
    return table


def empty_policy(e: EvaluateConfig) -> EmptyPolicy:
    """The configured empty-mask policy (``evaluate.empty_policy``)."""
    ep = e.empty_policy
    return EmptyPolicy(ep.both_empty, ep.ref_empty_only, ep.pred_empty_only)


def write_results(metrics_dir: str | Path, per_case: pd.DataFrame, summary: dict, **report: Any) -> Path:
    """Write ``per_case.csv``, ``summary.json``, the DVC plot table and the HTML report into ``metrics_dir``.

    ``report`` holds the keyword arguments of :func:`pipeline.evaluation.report.build_report` (overlays,
    config, lineage, train_log, class_names, title; ``extra_sections`` may be a callable, called once the tables and
    summary are written, so sections can read them). Used by the evaluate stage and ``pipeline.tools.score``.
    """
    metrics_dir = Path(metrics_dir)
    io.write_csv(metrics_dir / "per_case.csv", per_case)
    io.write_json(metrics_dir / "summary.json", summary)
    io.write_csv(metrics_dir / DICE_PLOT_FILE, dice_plot_table(per_case))
    if callable(report.get("extra_sections")):
        report["extra_sections"] = report["extra_sections"]()
    write_report(metrics_dir / REPORT_FILE, per_case, summary, **report)
    return metrics_dir


def dice_plot_table(per_case: pd.DataFrame) -> pd.DataFrame:
    """One row per case and class with a unique ``case_class`` label, for DVC's bar plots of Dice."""
    out = per_case[["case_id", "class_name", "dice"]].copy()
    out.insert(0, "case_class", out["case_id"].astype(str) + " / " + out["class_name"].astype(str))
    return out


def read_train_log(path: str | Path) -> pd.DataFrame | None:
    """The learning-curve table written by training, or None when absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        logger.info("%s not found: the report has no learning curves", path)
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        logger.warning("%s unreadable (%s): the report has no learning curves", path, err)
        return None


def _to_ras(arrays: Sequence[np.ndarray], affine: np.ndarray, zooms: Sequence[float]) -> tuple[list, tuple]:
    """Reorient 3D voxel arrays to the closest RAS axes for display; spacing permuted alike."""
    ornt = nib.orientations.io_orientation(affine)
    out = [nib.orientations.apply_orientation(a, ornt) for a in arrays]
    spacing = [0.0, 0.0, 0.0]
    for axis, (new_axis, _) in enumerate(ornt):
        spacing[int(new_axis)] = float(zooms[axis])
    return out, tuple(spacing)


def case_provenance(case: Case) -> dict[str, str]:
    """The input files of a case and their SHA-256 (every channel file, joined with ``;``)."""
    return {
        "case_id": case.case_id,
        "image_file": ";".join(p.name for p in case.images),
        "image_sha256": ";".join(sha256(p) for p in case.images),
        "label_file": case.label.name if case.label is not None else "",
        "label_sha256": sha256(case.label) if case.label is not None else "",
    }


def load_overlay(
    case: Case, prediction_file: Path, role: str, mean_dice: float, label_values: Sequence[float] = ()
) -> Overlay:
    """Image (first channel), reference and saved prediction of one case (any readable format), reoriented to
    RAS; masks stored with ``label_values`` (the stored value of each class) are shown as classes."""
    image, header = read_array(case.images[0])
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 4:
        image = image[..., 0]
    reference = read_label(case.label, label_values, like=case.images[0])[0]
    reference = to_classes(reference, label_values).reshape(image.shape)
    prediction = to_classes(read_array(prediction_file)[0], label_values).reshape(image.shape)
    if not header.physical_spacing and image.ndim == 3 and image.shape[2] == 1:  # a 2D picture, drawn as one
        pixels = (image[..., 0], reference[..., 0], prediction[..., 0])
        return Overlay(role, case.case_id, *pixels, (1.0, 1.0), mean_dice, picture=True)
    (image, reference, prediction), spacing = _to_ras([image, reference, prediction], header.affine, header.spacing)
    return Overlay(role, case.case_id, image, reference, prediction, spacing, mean_dice)


def summary_metrics(summary: dict) -> dict[str, float]:
    """Flatten the summary into MLflow metric names, e.g. ``test.organ.dice.mean``."""
    out = {"test.mean_dice": summary["mean_dice"]}
    for key, value in (summary.get("ensemble") or {}).items():  # ensemble vs single fold
        if isinstance(value, (int, float)):
            out[f"test.ensemble_vs_single.{key}"] = float(value)
    per_group = summary.get("per_group") or {}
    for prefix, part in (("test", summary), ("test.per_group", per_group)):
        for cls, stats in part.items():
            if cls in SUMMARY_KEYS or not isinstance(stats, dict):
                continue
            for metric, values in stats.items():
                for stat, value in values.items():
                    if isinstance(value, (int, float)):
                        out[f"{prefix}.{cls}.{metric}.{stat}"] = float(value)
    if per_group.get("mean_dice") is not None:
        out["test.per_group.mean_dice"] = float(per_group["mean_dice"])
    return out


def _log_to_mlflow(
    cfg: Config,
    meta: dict,
    per_case: pd.DataFrame,
    summary: dict,
    metrics_dir: Path,
    lineage: dict[str, str],
    model_folder: Path,
) -> None:
    """Log the evaluation to the training run of the model (``model_folder``) and register it, as evaluated:
    with a keep-largest-component choice made out of fold, the folder is logged again with its
    ``postprocessing.json`` (as ``model_postprocessed``) and that copy is registered."""
    run_id = meta.get("mlflow", {}).get("run_id")
    with run(cfg.mlflow, run_id=run_id, run_name="evaluate") as tracker:
        tracker.log_metrics(summary_metrics(summary))
        tracker.set_tags(
            {
                "evaluate.empty_policy": json.dumps(summary.get("empty_policy")),
                "evaluate.bootstrap": json.dumps(summary.get("bootstrap")),
                **lineage,
            }
        )
        tracker.log_table(per_case, TABLE_ARTIFACT)
        folder = str(Path(CSV_ARTIFACT).parent)  # where pipeline.evaluation.compare looks for per_case.csv
        for name in ("per_case.csv", "summary.json", REPORT_FILE):
            tracker.log_artifact(metrics_dir / name, folder)
        logger.info("logged the evaluation to MLflow run %s (%s)", tracker.run_id, tracker.uri)
        if "ensemble" in meta:  # the registry holds one model folder per version, not a fold ensemble
            logger.info("the ensemble of %d folds is not registered (predict with its folder)", len(meta["ensemble"]))
        elif cfg.mlflow.registered_model and tracker.run_id == run_id:  # the run that logged the model
            tags = {k: v for k, v in summary_metrics(summary).items() if k.count(".") <= 1 or k.endswith(".mean")}
            tags |= {"test.n_cases": summary.get("n_cases"), "weights_sha256": meta.get("weights_sha256", "")}
            artifact = "model"
            if chosen_postprocessing(cfg):  # prediction from the registry then keeps the components evaluation kept
                post = Path(cfg.train.out_dir) / POSTPROCESSING
                log_model_folder(run_id, model_folder, POSTPROCESSED, tracker.connection_uri, postprocessing=post)
                artifact = POSTPROCESSED
            register_model(tracker.connection_uri, cfg.mlflow.registered_model, run_id, tags, artifact)
