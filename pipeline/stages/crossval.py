"""Cross-validation stage: ``python -m pipeline.stages.crossval --config configs/params.yaml [--fold k]``.

With ``--fold k`` (DVC stage ``crossval@k``): fold k's model predicts its own validation cases into
``<evaluate.metrics_dir>/oof/fold_k/``. Without (DVC stage ``pool``): the pooled out-of-fold table
``<evaluate.metrics_dir>/cv/per_case.csv``, its ``summary.json``, and the keep-largest-component choice
``<train.out_dir>/postprocessing.json`` (see :mod:`pipeline.evaluation.crossval`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import run_main, stage_args
from pipeline.core.dicom_series import set_series_rule
from pipeline.evaluation.crossval import fold_tables, oof_dir, out_of_fold


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = stage_args(__doc__, argv, fold=True)
    set_series_rule(cfg.data.dicom)  # which series of a DICOM-folder scan
    if args.fold is None:
        out_of_fold(cfg)
    elif args.fold == "all":  # trained on every non-test case: nothing to predict out of fold
        oof_dir(cfg, "all").mkdir(parents=True, exist_ok=True)
        logging.getLogger(__name__).info("fold 'all' has no validation cases: no out-of-fold predictions")
    else:
        fold_tables(cfg, args.fold, Path(cfg.train.out_dir))
    return 0


if __name__ == "__main__":
    run_main(main)
