"""Compare two runs case by case (``python -m pipeline.tools.compare A B``); see :mod:`pipeline.evaluation.compare`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline.core import io
from pipeline.evaluation.compare import DEFAULT_METRICS, CompareError, compare, format_table, load_per_case
from pipeline.evaluation.compare import __doc__ as COMPARE_DOC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.compare",
        description=COMPARE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="outputs: the per-class table on stdout, --out (CSV) and --pairs-out (CSV of paired values)\n"
        "exit status: 0 compared; 2 a side cannot be read or the two share no (case, class), or a usage error",
    )
    parser.add_argument("a", help="run A: metrics folder, per_case.csv, mlflow:<run_id>, runs:/<run_id> or dvc:<rev>")
    parser.add_argument("b", help="run B, the same forms; differences are B - A")
    parser.add_argument("--out", default="compare.csv", help="CSV of the per-class table (default: %(default)s)")
    parser.add_argument("--pairs-out", help="CSV of the paired per-case values (default: <out>_pairs.csv)")
    parser.add_argument("--tracking-uri", help="MLflow store for mlflow:/runs:/ inputs")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="metrics to compare")
    parser.add_argument("--n-bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the terminal for the table
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        a = load_per_case(args.a, args.tracking_uri)
        b = load_per_case(args.b, args.tracking_uri)
        table, pairs = compare(a, b, args.metrics, args.n_bootstrap, args.seed)
    except CompareError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    pairs_out = Path(args.pairs_out) if args.pairs_out else out.with_name(f"{out.stem}_pairs.csv")
    io.write_csv(out, table.assign(a=args.a, b=args.b))
    io.write_csv(pairs_out, pairs)
    print(f"A: {args.a}\nB: {args.b}\npaired by (case_id, class_name); differences are B - A\n")
    print(format_table(table))
    print(f"\nwritten: {out}, {pairs_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
