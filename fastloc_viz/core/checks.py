"""Argument checks shared by every entry point: one message per kind of mistake.

Each check names the argument, the value given and what is allowed, and raises
``ValueError`` (a value out of range or not among the choices) or ``TypeError`` (a value of
the wrong type).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def check_choice(name: str, value, choices: Iterable) -> None:
    """``value`` must be one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def check_int(name: str, value, minimum: int, what: str | None = None) -> None:
    """``value`` must be an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be {what or f'at least {minimum}'}")


def check_threshold(value, name: str = "threshold") -> None:
    """A box threshold: a fraction of the map's maximum in ``[0, 1]``."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not (ok and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} must be a fraction of the map's maximum in [0, 1]")


def check_sigma(value, name: str = "sigma") -> None:
    """A smoothing width: ``None`` (the default) or a non-negative number of pixels."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if value is not None and not (ok and value >= 0):
        raise ValueError(f"{name}={value!r} must be a non-negative number of pixels")
