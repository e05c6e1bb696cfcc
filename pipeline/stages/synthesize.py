"""Stage: write the embedded default dataset (synthetic MRI-like NIfTI volumes in MSD layout)."""

from __future__ import annotations

import logging

from pipeline.config import run_main, stage_args
from pipeline.core.synthetic import make_synthetic_dataset


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, cfg = stage_args(__doc__, argv)
    s = cfg.synthetic
    make_synthetic_dataset(s.out_dir, n_cases=s.n_cases, seed=s.seed, spacing=s.spacing)
    return 0


if __name__ == "__main__":
    run_main(main)
