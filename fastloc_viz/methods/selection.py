"""Which methods a view shows: the default five, ``"all"``, or the user's list.

MethodComparison, the HTML report (``fastloc-viz explain --methods``) and ``fastloc-viz
evaluate --methods all`` all read :func:`select_methods`, so "the default" and "all" mean
the same everywhere. The default is the five methods the toolkit always offered (FastLoc,
its rescored variant, Grad-CAM, guided backprop, guided Grad-CAM), plus any method
registered from outside the package (a user registers a method to compare it); the costlier
baselines (Score-CAM, occlusion, integrated gradients, ...) are one ``"all"`` or one name away.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import METHODS, get_method

__all__ = ["ALL", "DEFAULT_METHODS", "default_methods", "select_methods"]

DEFAULT_METHODS = ("fastloc", "fastloc_rescored", "gradcam", "guided_backprop", "guided_gradcam")
"""The built-in methods shown when none are named."""
ALL = "all"


def default_methods() -> tuple[str, ...]:
    """:data:`DEFAULT_METHODS` and every method registered outside fastloc_viz, in registry order."""
    return tuple(
        name for name, m in METHODS.items()
        if name in DEFAULT_METHODS or not type(m).__module__.startswith("fastloc_viz.")
    )


def select_methods(methods: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """``None`` -> :func:`default_methods`; ``"all"`` -> every registered method; a name, a
    comma-separated string or a sequence of names -> those, checked, repeats dropped.

    Raises:
        ValueError: an unregistered name (the registered ones are listed) or an empty list.
    """
    if methods is None:
        return default_methods()
    if isinstance(methods, str):
        if methods.strip() == ALL:
            return tuple(METHODS)
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    names = list(dict.fromkeys(methods))
    if not names:
        raise ValueError(f"methods={methods!r} names no method; give names from {list(METHODS)} or 'all'")
    for name in names:
        get_method(name)  # the registry's one message for an unknown name
    return tuple(names)
