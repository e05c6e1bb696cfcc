"""Stage: validate, fingerprint and plan, then preprocess the raw dataset into ``preprocess.out_dir``.

Rerunning after an interrupted run only does the cases that are not finished (see
:mod:`pipeline.preprocessing.preprocessor`).
"""

from __future__ import annotations

import logging
import sys

from pipeline.config import stage_args
from pipeline.core.dataset import read_dataset
from pipeline.core.dicom import set_series_rule
from pipeline.core.labels import resolve_labels
from pipeline.core.validation import validate_or_exit
from pipeline.preprocessing.preprocessor import plan_dataset, preprocess_dataset


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = stage_args(__doc__, argv)
    cfg_path = args.config
    set_series_rule(cfg.data.dicom)  # which series of a DICOM-folder scan
    info, label_problems = resolve_labels(read_dataset(cfg.data.root, cfg.data.layout, cfg.data.manifest))
    if label_problems:
        raise SystemExit("\n".join(f"{file}: {problem}" for file, problem in label_problems))
    p = cfg.preprocess
    if p.workers < 1 or p.foreground_samples < 1:
        raise SystemExit(
            f"{cfg_path}: preprocess.workers ({p.workers}) and preprocess.foreground_samples "
            f"({p.foreground_samples}) must be >= 1"
        )
    validate_or_exit(info, p.workers)
    plan, fingerprints = plan_dataset(info, p)
    preprocess_dataset(info, plan, p.out_dir, fingerprints, p.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
