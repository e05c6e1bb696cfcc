"""Score a folder of predicted masks against references: ``python -m pipeline.tools.score --pred P --ref R``.

inputs:
  --pred   a folder of predicted masks, one file per case (NIfTI, NRRD, MetaImage), from any program;
           the case id is the file name without its suffix and without a _pred/_seg/_mask/_label tag
  --ref    a folder of reference masks named alike (label names from a dataset.json beside or above it,
           else the values found), or a dataset (MSD folder, images/ + labels/, CSV manifest)
outputs (in --out):
  per_case.csv     one row per case and foreground class: Dice, IoU, HD95, ASSD, NSD, volumes, file SHA-256
  summary.json     per-class statistics with bootstrap CIs, mean_dice and the empty-mask policy
  report.html      self-contained report (overlays when the references are a dataset with images)
  per_case_dice.csv
Every prediction must lie on its reference's voxel grid; all inputs are checked before anything is
written. Two score folders can then be compared: python -m pipeline.tools.compare A/ B/

exit status: 0 scored; 2 the inputs cannot be scored (one line per problem on stderr, nothing written)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from pipeline.config import EvaluateConfig, load
from pipeline.evaluation.scoring import ScoreError, score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", required=True, help="folder of predicted masks")
    parser.add_argument("--ref", required=True, help="folder of reference masks, or a dataset")
    parser.add_argument("--out", default="score", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--missing",
        choices=["skip", "empty", "error"],
        default="skip",
        help="a reference without prediction: skip it (default; counted in summary.json and warned about), "
        "score it as an empty prediction (challenge rule), or refuse to score",
    )
    parser.add_argument("--labels", help="dataset.json whose 'labels' name the label values")
    parser.add_argument(
        "--config",
        help="params file whose evaluate block (NSD tolerance, empty-mask policy, bootstrap) applies "
        "(default: the defaults of pipeline/config.py)",
    )
    parser.add_argument("--nsd-tolerance-mm", type=float, help="overrides evaluate.nsd_tolerance_mm")
    parser.add_argument("--n-bootstrap", type=int, help="overrides evaluate.n_bootstrap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    e = load(args.config).evaluate if args.config else EvaluateConfig()
    overrides = {"nsd_tolerance_mm": args.nsd_tolerance_mm, "n_bootstrap": args.n_bootstrap}
    e = dataclasses.replace(e, **{k: v for k, v in overrides.items() if v is not None})
    try:
        summary = score(args.pred, args.ref, args.out, e, args.missing, args.labels)
    except ScoreError as err:
        for line in str(err).splitlines():
            print(f"score: {line}", file=sys.stderr)
        return 2
    mean = summary["mean_dice"]
    print(f"mean Dice {'n/a' if mean is None else f'{mean:.4f}'} over {summary['n_cases']} cases: {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
