"""Train stage: ``python -m pipeline.stages.train --config configs/params.yaml [--fold k]``.

``dvc repro`` runs it once per fold of ``cv.folds`` (stages ``train@k``, model folders ``<train.out_dir>/fold_k``);
without ``--fold`` it trains ``sample.fold`` into ``train.out_dir`` (see :func:`pipeline.config.for_fold`).

Single process as above; data-parallel: ``torchrun --nproc_per_node N -m pipeline.stages.train --config ...``
(see :mod:`pipeline.training.trainer`).
"""

from __future__ import annotations

import logging

from pipeline.config import ConfigError, run_main, stage_args
from pipeline.training.distributed import shutdown
from pipeline.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = stage_args(__doc__, argv, fold=True)
    try:
        train(cfg)
    except ConfigError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    run_main(main)
