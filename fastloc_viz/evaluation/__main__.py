"""``python -m fastloc_viz.evaluation`` (and ``torchrun -m fastloc_viz.evaluation``): the
``fastloc-viz evaluate`` command itself, the same parser and the same function (a command-line
entry, so it sits with the CLI above the packages: tests/test_architecture.py)."""

import sys

from ..cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
