"""Stage: the training sample table for one fold (``--fold k``, else ``sample.fold``) of the split preprocess wrote."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import ConfigError, run_main, stage_args
from pipeline.core.splits import check_fold, fold_assignment, read_splits
from pipeline.preprocessing.preprocessor import load_plan
from pipeline.preprocessing.settings import resolve, values
from pipeline.sampling.locations import build_samples


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = stage_args(__doc__, argv, fold=True)
    s, pre = cfg.sample, Path(cfg.preprocess.out_dir)
    try:  # before anything is written
        check_fold(s.fold, cfg.split.folds)
    except ValueError as err:
        raise ConfigError(f"{args.config}: sample.{err}") from None
    plan = load_plan(pre)
    splits = read_splits(cfg.split.file)
    assignment = fold_assignment(splits, s.fold)
    settings = values(resolve(plan, cfg))  # the plan's (planned or overridden) choices
    mode = "2d" if settings["dims"] == 2 else "3d"
    groups = splits.get("groups")
    build_samples(pre, s.out_dir, assignment, plan.num_classes, mode, settings["slice_axis"], s.seed, groups)
    return 0


if __name__ == "__main__":
    run_main(main)
