"""``segpipe <command>``: the user commands in one console script (``python -m pipeline.tools.<command>`` alike).

Each command's ``--help`` states its inputs, outputs and exit status.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "validate": "check a dataset and list every problem (case, file, problem)",
    "predict": "predict label maps for new scans with a trained model folder",
    "score": "score a folder of masks from any program against references, as evaluate does",
    "compare": "compare two evaluations case by case (paired differences, bootstrap CI, Wilcoxon)",
    "download": "download and verify a public dataset (Medical Segmentation Decathlon)",
    "params": "write a full params file from a recipe (its overrides on the defaults)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: segpipe <command> [options]   (segpipe <command> --help for one command)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "exit status: that of the command; 2 for an unknown command"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to ``pipeline.tools.<command>.main(argv[1:])`` (imported only when used)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"segpipe: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"pipeline.tools.{command}").main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
