"""Stage: validate, split, then fingerprint, plan and preprocess the training cases into ``preprocess.out_dir``.

The case-level split (test hold-out + folds, ``split.file``) is made first, from the dataset description; the
plan and the preprocessed volumes come from the non-test cases only, so no test case shapes what training
sees (evaluation predicts the test cases from their raw scans). Rerunning after an interrupted run only does
the cases that are not finished (see :mod:`pipeline.preprocessing.preprocessor`).
"""

from __future__ import annotations

import dataclasses
import logging

from pipeline.config import Config, ConfigError, run_main, stage_args
from pipeline.core.cases import DatasetInfo
from pipeline.core.dataset import read_configured
from pipeline.core.dicom_series import set_series_rule
from pipeline.core.labels import resolve_labels
from pipeline.core.splits import load_or_make_splits, non_test_cases
from pipeline.core.validation import validate_or_exit
from pipeline.preprocessing.preprocessor import plan_dataset, preprocess_dataset
from pipeline.preprocessing.settings import format_settings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = stage_args(__doc__, argv)
    _check_ranges(cfg, args.config)
    set_series_rule(cfg.data.dicom)  # which series of a DICOM-folder scan
    info, label_problems = resolve_labels(read_configured(cfg.data))
    if label_problems:
        raise SystemExit("\n".join(f"{file}: {problem}" for file, problem in label_problems))
    validate_or_exit(info, cfg.preprocess.workers)
    train_info = _training_cases(info, cfg, args.config)
    p = cfg.preprocess
    try:
        plan, fingerprints = plan_dataset(train_info, p, cfg)
    except ConfigError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    preprocess_dataset(train_info, plan, p.out_dir, fingerprints, p.workers)
    print(f"The plan ({p.out_dir}/plans.json; config null = planned, a value = overridden):")
    print(format_settings(plan.settings))
    return 0


def _check_ranges(cfg: Config, cfg_path: str) -> None:
    """Settings the schema's types cannot bound, checked before anything is read."""
    p, s = cfg.preprocess, cfg.split
    if p.workers < 1 or p.foreground_samples < 1:
        raise SystemExit(
            f"{cfg_path}: preprocess.workers ({p.workers}) and preprocess.foreground_samples "
            f"({p.foreground_samples}) must be >= 1"
        )
    if not 0.0 <= s.test_fraction < 1.0:
        raise ConfigError(f"{cfg_path}: split.test_fraction ({s.test_fraction}) must be in [0, 1)")


def _training_cases(info: DatasetInfo, cfg: Config, cfg_path: str) -> DatasetInfo:
    """The split (made once, reused), and the dataset cut to its non-test cases: all the plan may see."""
    s = cfg.split
    labelled = [c for c in info.cases if c.label is not None]
    groups = {c.case_id: c.group for c in labelled if c.group}
    given = [c.case_id for c in labelled if c.test] if s.dataset_test else []
    ids = [c.case_id for c in labelled]
    try:
        splits = load_or_make_splits(s.file, ids, s.test_fraction, s.folds, s.seed, groups, given)
    except ValueError as err:
        raise ConfigError(f"{cfg_path}: split: {err}") from None
    keep = set(non_test_cases(splits))
    return dataclasses.replace(info, cases=tuple(c for c in info.cases if c.case_id in keep))


if __name__ == "__main__":
    run_main(main)
