"""``python -m fastloc_viz.evaluation``: the same run as ``fastloc-viz evaluate``."""

import sys

from .boxfree import main

sys.exit(main())
