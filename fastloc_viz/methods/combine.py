"""Combine rules: how k neuron maps become one localization map, and :func:`recombine`.

Each rule is one function registered with :func:`register_rule`. It receives the
``k x H x W`` neuron maps (each scaled to ``[0, 1]``, ``k >= 1``) and keyword arguments
``scores`` (the k rank scores), ``sigma`` (the smoothing in pixels, resolved), ``class_map``
(the probe layer's Grad-CAM scaled to ``[0, 1]``, or ``None``) and ``blob_percentile``, and
returns an ``H x W`` map in ``[0, 1]``. :data:`RULES` lists the registered rules; the
explorer, ``explain`` and the benchmarks all read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..core import maps as M
from ..core.checks import check_choice
from ..core.results import Explanation
from .base import get_method


@dataclass(frozen=True)
class Rule:
    """A registered combine rule.

    Attributes:
        name: what ``combine=`` takes.
        fn: the function (see the module's docstring for its arguments).
        uses_class_map: the rule needs ``Explanation.class_map``; with no neuron selected it
            gives the class map.
        doc: one line for menus and tooltips.
    """

    name: str
    fn: Callable[..., np.ndarray]
    uses_class_map: bool
    doc: str


_RULES: dict[str, Rule] = {}
RULES: Mapping[str, Rule] = MappingProxyType(_RULES)
"""Name -> :class:`Rule`, in registration order (a live, read-only view: register with
:func:`register_rule`)."""


def register_rule(name: str, *, uses_class_map: bool = False) -> Callable:
    """Register a combine rule under ``name`` (decorator).

    Re-running the same definition (a notebook cell) replaces it; another function under a
    taken name raises ``ValueError``.
    """

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        old = _RULES.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a combine rule named {name!r} is already registered ({old.fn.__qualname__})")
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        _RULES[name] = Rule(name, fn, uses_class_map, doc)
        return fn

    return deco


def unregister_rule(name: str) -> None:
    """Remove a registered combine rule (for tests and notebook clean-ups)."""
    check_choice("combine", name, _RULES)
    del _RULES[name]


def cam_rules() -> tuple[str, ...]:
    """The names of the rules that use the class map."""
    return tuple(r.name for r in RULES.values() if r.uses_class_map)


def _cam_combine(maps: np.ndarray, sigma: float, class_map: np.ndarray) -> np.ndarray:
    return M.normalize(M.normalize(M.smooth(maps.mean(axis=0), sigma)) + class_map)


@register_rule("refine_cam", uses_class_map=True)
def refine_cam(maps, *, sigma, class_map, **_):
    """The class map, raised toward its peak where the neurons fire: the class map says where (default)."""
    # G: each neuron map weighted by the class map squared (the neurons' detail, kept where the
    # class evidence is), averaged, smoothed, scaled to max 1. The map is
    # cam + 0.9 * (1 - cam) * G: never below the class map, below 1 wherever the class map is,
    # so its peak is the class map's peak and its mask at any threshold holds the class map's.
    g = M.normalize(M.smooth((maps * class_map**2).mean(axis=0), sigma))
    return (class_map + REFINE_LIFT * (1.0 - class_map) * g).astype(np.float32)


REFINE_LIFT = 0.9
"""How far ``"refine_cam"`` lifts a pixel toward the class map's peak where the neurons fire
(below 1, so the peak stays the class map's)."""


@register_rule("gate_cam", uses_class_map=True)
def gate_cam(maps, *, sigma, class_map, **_):
    """Each neuron map times the class map, averaged, smoothed, plus the class map."""
    return _cam_combine(maps * class_map, sigma, class_map)


@register_rule("sum_cam", uses_class_map=True)
def sum_cam(maps, *, sigma, class_map, **_):
    """The mean of the neuron maps, smoothed, plus the class map."""
    return _cam_combine(maps, sigma, class_map)


@register_rule("sum")
def sum_(maps, *, sigma, **_):
    """The mean of the neuron maps, smoothed."""
    return M.normalize(M.smooth(maps.mean(axis=0), sigma))


@register_rule("max")
def max_(maps, *, sigma, **_):
    """The pixel-wise maximum of the neuron maps, smoothed."""
    return M.normalize(M.smooth(maps.max(axis=0), sigma))


@register_rule("weighted")
def weighted(maps, *, sigma, scores, **_):
    """The neuron maps weighted by the positive part of their rank scores, smoothed."""
    if scores is None or len(scores) != maps.shape[0]:
        raise ValueError("combine='weighted' needs one rank score per neuron map")
    wts = np.clip(np.asarray(scores, dtype=np.float32), 0, None)
    wts = wts / wts.sum() if wts.sum() > 0 else np.full_like(wts, 1.0 / len(wts))
    return M.normalize(M.smooth(np.tensordot(wts, maps, axes=1), sigma))


@register_rule("union")
def union(maps, *, blob_percentile, **_):
    """The authors' box: the union of each neuron map's blob (not smoothed)."""
    return np.any([M.blob_mask(m, blob_percentile) for m in maps], axis=0).astype(np.float32)


def combine_maps(
    neuron_maps: np.ndarray,
    *,
    rule: str = "sum",
    scores: Sequence[float] | None = None,
    sigma: float | None = None,
    blob_percentile: float = 80.0,
    class_map: np.ndarray | None = None,
) -> np.ndarray:
    """Combine ``k x H x W`` neuron maps into one ``H x W`` localization map in ``[0, 1]``.

    Args:
        neuron_maps: ``k x H x W``, each scaled to ``[0, 1]``.
        rule: a name in :data:`RULES`.
        scores: the k rank scores (``"weighted"``).
        sigma: Gaussian smoothing in pixels (``None``: :func:`maps.default_sigma`).
        blob_percentile: the ``"union"`` rule's blob percentile.
        class_map: ``H x W``, the probe layer's Grad-CAM (the rules that use it).

    An empty selection (``k = 0``) gives an all-zero map, or the class map for the rules
    that use it.
    """
    check_choice("combine", rule, RULES)
    r = RULES[rule]
    maps = np.asarray(neuron_maps, dtype=np.float32)
    shape = maps.shape[-2:]
    cam = None
    if r.uses_class_map:
        if class_map is None:
            raise ValueError(f"combine={rule!r} needs the probe layer's class map (Explanation.class_map)")
        if tuple(np.shape(class_map)) != tuple(shape):
            raise ValueError(f"class_map has shape {np.shape(class_map)}, the neuron maps {tuple(shape)}")
        cam = M.normalize(class_map)
    if maps.shape[0] == 0:
        return cam if cam is not None else np.zeros(shape, dtype=np.float32)
    s = M.default_sigma(shape) if sigma is None else sigma
    return r.fn(maps, sigma=s, scores=scores, class_map=cam, blob_percentile=blob_percentile)


def recombine(explanation: Explanation, enabled: Sequence[int] | None = None, **settings: Any) -> Explanation:
    """Recompute ``saliency`` and ``box`` from the cached neuron maps: no backward pass.

    Args:
        explanation: an explanation with neuron maps (``fastloc`` / ``fastloc_rescored``, or
            a registered method with neurons).
        enabled: the 1-based ranks of the neurons to keep (``None``: all).
        **settings: override the explanation's recombinable parameters (the method's
            ``recombinable``: for ``fastloc``, ``combine``, ``threshold``, ``sigma`` and
            ``components``); a parameter that needs a new pass raises ``ValueError``.

    Returns:
        A new explanation; ``params["enabled"]`` records the ranks used.
    """
    if explanation.neuron_maps is None or explanation.neurons is None:
        raise ValueError(f"method {explanation.method!r} has no neuron maps to recombine")
    return get_method(explanation.method).recombine(explanation, enabled, **settings)
