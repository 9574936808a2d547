"""Every method is one class in one file of this package, registered by name.

``fastloc_viz.METHODS`` (a live view of the registry), the CLI's choices, ``evaluate``, the
HTML report and the widgets all read the registry, so a method registered with
:func:`register_method` (see ``docs/own-method.md``) works everywhere at once.
"""

from .base import (
    METHODS,
    Attribution,
    Context,
    Method,
    MethodParams,
    get_method,
    methods_where,
    register_method,
    unregister_method,
)

# The built-in methods register themselves on import, in this order.
from . import fastloc, fastloc_rescored, gradcam, guided_backprop, guided_gradcam  # noqa: E402,F401  isort: skip
from . import gradcam_pp, xgradcam, layercam, scorecam, eigencam  # noqa: E402,F401  isort: skip
from . import saliency, integrated_gradients, smoothgrad, occlusion  # noqa: E402,F401  isort: skip
from .selection import ALL, DEFAULT_METHODS, default_methods, select_methods  # noqa: E402  isort: skip

__all__ = [
    "ALL",
    "DEFAULT_METHODS",
    "METHODS",
    "Attribution",
    "Context",
    "Method",
    "MethodParams",
    "default_methods",
    "get_method",
    "methods_where",
    "register_method",
    "select_methods",
    "unregister_method",
]
