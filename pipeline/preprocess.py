"""Stage: validate and preprocess the raw dataset into ``preprocess.out_dir``."""

from __future__ import annotations

import logging
import sys

from pipeline.config import stage_args
from pipeline.dataset import read_dataset
from pipeline.preprocessing import fingerprint_dataset, make_plan, preprocess_dataset
from pipeline.validation import validate_or_exit


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, cfg = stage_args(__doc__, argv)
    info = read_dataset(cfg.data.root, cfg.data.layout, cfg.data.manifest)
    validate_or_exit(info)
    p = cfg.preprocess
    fingerprints = fingerprint_dataset(info)
    plan = make_plan(info, fingerprints, p.target_spacing, p.normalization, p.crop_foreground)
    preprocess_dataset(info, plan, p.out_dir, fingerprints, p.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
