"""Write a full params file for a recipe: every default of ``pipeline/config.py`` with the recipe's values.

A recipe (``configs/hippocampus.yaml``) holds only its overrides, each with its reason; DVC needs every key
of ``configs/params.yaml`` (``dvc.yaml`` interpolates paths and lists params per key). So a recipe is used as

    python -m pipeline.tools.params configs/hippocampus.yaml --out configs/params.yaml && dvc repro
"""

from __future__ import annotations

import argparse

import yaml

from pipeline.config import ConfigError, load, to_dict
from pipeline.core import io


def main(argv: list[str] | None = None) -> int:
    """0 written; 2 for a recipe that is not a valid config (one line naming the file and key)."""
    parser = argparse.ArgumentParser(
        prog="segpipe params",
        description=__doc__.split("\n\n")[0],
        epilog="input: a recipe (a partial params file). output: --out, the full params file. exit status: 0 "
        "written, 2 the recipe is not a valid config (nothing written).",
    )
    parser.add_argument("recipe", help="partial params file, e.g. configs/hippocampus.yaml")
    parser.add_argument("--out", required=True, help="full params file to write, e.g. configs/params.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.recipe)
    except ConfigError as err:
        print(err)
        return 2
    header = f"# Written by `python -m pipeline.tools.params {args.recipe}`: the defaults with its overrides.\n"
    io.write_text(args.out, header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
