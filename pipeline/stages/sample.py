"""Stage: split cases (written once) and build the training sample table for the configured mode."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from pipeline.config import ConfigError, stage_args
from pipeline.preprocessing.preprocessor import CASES_FILE, load_plan
from pipeline.sampling.locations import build_samples, check_fold, fold_assignment, load_or_make_splits


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = stage_args(__doc__, argv)
    s, pre = cfg.sample, Path(cfg.preprocess.out_dir)
    try:  # before the split file is written
        check_fold(s.fold, s.folds)
    except ValueError as err:
        raise ConfigError(f"{args.config}: sample.{err}") from None
    plan = load_plan(pre)
    cases = pd.read_csv(pre / CASES_FILE)
    labelled = [c for c in cases["case_id"] if (pre / "labels" / f"{c}.npy").is_file()]
    splits = load_or_make_splits(s.splits_file, labelled, s.test_fraction, s.folds, s.seed)
    assignment = fold_assignment(splits, s.fold)
    build_samples(pre, s.out_dir, assignment, plan.num_classes, s.mode, s.slice_axis, s.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
