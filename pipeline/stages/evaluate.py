"""Evaluate stage: predict the held-out test cases and score them (``python -m pipeline.stages.evaluate``)."""

from __future__ import annotations

import logging
import sys

from pipeline.config import stage_args
from pipeline.evaluation.evaluator import evaluate


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, cfg = stage_args(__doc__, argv)
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
