"""``python -m pipeline <command>``: the same as the ``segpipe`` console script."""

import sys

from pipeline.tools.cli import main

sys.exit(main())
