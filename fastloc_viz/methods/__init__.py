"""Every method is one class in one file of this package, registered by name.

``fastloc_viz.METHODS`` (a live view of the registry), the CLI's choices, ``evaluate``, the
HTML report and the widgets all read the registry, so a method registered with
:func:`register_method` (see ``docs/own-method.md``) works everywhere at once.
"""

from . import base, selection
from .base import *  # the registry's names, listed once: in base.__all__
from .selection import *  # which methods a view shows: in selection.__all__

# The built-in methods register themselves on import, in this order.
from . import fastloc, fastloc_rescored, gradcam, guided_backprop, guided_gradcam  # noqa: E402,F401  isort: skip
from . import gradcam_pp, xgradcam, layercam, scorecam, eigencam  # noqa: E402,F401  isort: skip
from . import saliency, integrated_gradients, smoothgrad, occlusion  # noqa: E402,F401  isort: skip

__all__ = [*base.__all__, *selection.__all__]
