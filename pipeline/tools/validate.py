"""Check a dataset and print every problem as a table: ``python -m pipeline.tools.validate <dataset root>``.

Exit status 0 (with a one-line OK) when every case is fine, 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.core import dicom_series
from pipeline.core.cases import DATASET_ROW, Problem
from pipeline.core.dataset import dataset_folder, read_dataset
from pipeline.core.labels import INFERRED, resolve_labels
from pipeline.core.readers import add_max_voxels_argument, set_max_voxels
from pipeline.core.validation import format_problems, summary_line, validate_dataset

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.validate",
        description=__doc__.splitlines()[0],
        epilog="input: a dataset (MSD folder, images/ + labels/ folder, or CSV manifest). output: the problems as a "
        "table (case, file, problem) on stdout; nothing is written. exit status: 0 every case is fine, 1 problems "
        "found, 2 usage error.",
    )
    parser.add_argument("root", help="dataset folder (or a CSV manifest)")
    parser.add_argument(
        "--layout",
        choices=["auto", "msd", "folder", "csv"],
        default="auto",
        help="msd: dataset.json + imagesTr/ + labelsTr/; folder: images and labels paired by case id; "
        "csv: manifest case_id,image,label (default: detect)",
    )
    parser.add_argument("--manifest", default=None, help="CSV manifest (layout csv; default <root>/manifest.csv)")
    parser.add_argument(
        "--channels", nargs="+", default=None, help="input channels to keep, by name (data.channels; default: all)"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 4 cores)")
    add_max_voxels_argument(parser)
    dicom_series.add_rule_arguments(parser)
    args = parser.parse_args(argv)
    try:
        dicom_series.set_series_rule(dicom_series.rule_from_args(args))
    except ValueError as err:
        parser.error(str(err))
    if args.max_voxels < 1:
        parser.error("--max-voxels must be >= 1")
    set_max_voxels(args.max_voxels)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    info, label_problems = resolve_labels(read_dataset(args.root, args.layout, args.manifest, args.channels))
    problems = [Problem(DATASET_ROW, f, p) for f, p in label_problems] + validate_dataset(info, args.workers)
    if info.labels_source == INFERRED:
        found = ", ".join(f"{v} ({name})" for v, name in info.declared_labels.items())
        print(f"no dataset.json: label values found in the masks: {found}")
    if problems:
        print(format_problems(problems))
        print(summary_line(problems), file=sys.stderr)
        return 1
    n_test = sum(c.test for c in info.cases)
    given = f" ({n_test} of them the dataset's own test cases)" if n_test else ""
    read = args.root if args.manifest or args.layout == "csv" else dataset_folder(args.root)
    print(f"OK: {len(info.cases)} cases{given} in {read} validated, no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
