"""Evaluate stage: predict the held-out test cases and score them (``python -m pipeline.stages.evaluate``)."""

from __future__ import annotations

import logging

from pipeline.config import run_main, stage_args
from pipeline.core.dicom_series import set_series_rule
from pipeline.evaluation.evaluator import evaluate


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, cfg = stage_args(__doc__, argv)
    set_series_rule(cfg.data.dicom)  # which series of a DICOM-folder scan
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    run_main(main)
