"""Combine rules: how k neuron maps become one localization map, and :func:`recombine`.

Each rule carries its own default box threshold (``RULES[name].threshold``, given where it is
registered below), chosen for its own map on the development split of three models
(``benchmarks/defaults_search.py``, docs/results.md).

Each rule is one function registered with :func:`register_rule`. It receives the
``k x H x W`` neuron maps (each scaled to ``[0, 1]``, ``k >= 1``) and keyword arguments
``scores`` (the k rank scores), ``sigma`` (the smoothing in pixels, resolved), ``class_map``
(the probe layer's Grad-CAM scaled to ``[0, 1]``, or ``None``) and ``blob_percentile``, and
returns an ``H x W`` map in ``[0, 1]``. :data:`RULES` lists the registered rules; the
explorer, ``explain`` and the benchmarks all read it.

A rule may also register its **parts** (``parts=``): a function of the same arguments that
returns a :class:`Parts`, the rule's map written as what the class map alone gives plus what
each neuron's weighted map adds. :func:`neuron_shares` reads them to say how much of the box
each neuron drew (the explorer's cards).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage

from ..core import maps as M
from ..core.checks import check_choice, check_threshold
from ..core.results import Explanation
from .base import get_method


UNCHOSEN = 0.5
"""The box threshold of a rule registered without one: half its map's maximum (chosen on no
data; pass ``threshold=`` to :func:`register_rule`)."""


@dataclass(frozen=True)
class Rule:
    """A registered combine rule.

    Attributes:
        name: what ``combine=`` takes.
        fn: the function (see the module's docstring for its arguments).
        uses_class_map: the rule needs ``Explanation.class_map``; with no neuron selected it
            gives the class map.
        doc: one line for menus and tooltips.
        parts: ``None``, or a function returning the rule's :class:`Parts`.
        threshold: the rule's own default box threshold (a fraction of its map's maximum),
            chosen for its map; fastloc's ``threshold=None`` means this one.
    """

    name: str
    fn: Callable[..., np.ndarray]
    uses_class_map: bool
    doc: str
    parts: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
    threshold: float = UNCHOSEN


_RULES: dict[str, Rule] = {}
RULES: Mapping[str, Rule] = MappingProxyType(_RULES)
"""Name -> :class:`Rule`, in registration order (a live, read-only view: register with
:func:`register_rule`)."""


def register_rule(
    name: str, *, uses_class_map: bool = False, parts: Callable | None = None, threshold: float = UNCHOSEN
) -> Callable:
    """Register a combine rule under ``name`` (decorator); ``parts``: its additive parts, if it
    has them (see the module's docstring); ``threshold``: its default box threshold, chosen for
    its own map (:data:`UNCHOSEN` if not given).

    Re-running the same definition (a notebook cell) replaces it; another function under a
    taken name raises ``ValueError``.
    """

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        old = _RULES.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a combine rule named {name!r} is already registered ({old.fn.__qualname__})")
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        check_threshold(threshold)
        _RULES[name] = Rule(name, fn, uses_class_map, doc, parts, float(threshold))
        return fn

    return deco


def unregister_rule(name: str) -> None:
    """Remove a registered combine rule (for tests and notebook clean-ups)."""
    check_choice("combine", name, _RULES)
    del _RULES[name]


def cam_rules() -> tuple[str, ...]:
    """The names of the rules that use the class map."""
    return tuple(r.name for r in RULES.values() if r.uses_class_map)


@dataclass(frozen=True)
class Parts:
    """A combined map in additive parts: ``base + sum_i post * smooth(terms[i], sigma) / norm``.

    ``base`` (``H x W``) is what the class map alone gives (zeros for the rules without it), and
    the ``i``-th term is the ``i``-th neuron's weighted map before smoothing; ``post`` (``H x W``
    or a number) weights the smoothed terms; ``norm`` is the rule's normalization, ``None`` for
    the maximum of ``smooth(terms.sum(0))`` (computed only when it is needed).
    """

    base: np.ndarray
    terms: np.ndarray
    post: np.ndarray | float
    sigma: float
    norm: float | None = None

    def _norm(self) -> float:
        top = self.norm if self.norm is not None else float(M.smooth(self.terms.sum(axis=0), self.sigma).max())
        return top if top > 0 else np.inf

    def maps(self) -> np.ndarray:
        """The ``k x H x W`` part each neuron adds (``base + maps().sum(0)`` is the rule's map)."""
        return np.stack([self.post * M.smooth(t, self.sigma) / self._norm() for t in self.terms]).astype(np.float32)

    def box_masses(self, box, mass: float | None = None) -> tuple[float, np.ndarray]:
        """``(base's mass, each part's mass)`` inside ``box``, with one smoothing whatever k: the
        Gaussian (zero outside the image) is symmetric, so the mass of ``post * smooth(t)`` in the
        box is the sum of ``t * smooth(post * box)``. ``mass``, the rule's map's own mass in the
        box, spares computing ``norm``: the parts then share ``mass - base's mass``."""
        x0, y0, x1, y1 = box
        window = np.zeros(self.base.shape, dtype=np.float32)
        window[y0:y1, x0:x1] = 1.0
        seen = M.smooth(window * self.post, self.sigma).astype(np.float64)
        base = float(self.base[y0:y1, x0:x1].sum(dtype=np.float64))
        raw = np.tensordot(self.terms.astype(np.float64), seen, axes=2)
        if mass is None or self.norm is not None:
            return base, raw / self._norm()
        total = float(raw.sum())
        return base, raw * (max(mass - base, 0.0) / total) if total > 0 else raw


def _linear_parts(terms: np.ndarray, sigma: float, post=1.0, base=None) -> Parts:
    """The parts of ``base + post * normalize(smooth(terms.sum(0)))``."""
    return Parts(np.zeros(terms.shape[1:], dtype=np.float32) if base is None else base, terms, post, sigma)


def _cam_combine(maps: np.ndarray, sigma: float, class_map: np.ndarray) -> np.ndarray:
    return M.normalize(M.normalize(M.smooth(maps.mean(axis=0), sigma)) + class_map)


def _cam_combine_parts(maps: np.ndarray, sigma: float, class_map: np.ndarray) -> Parts:
    terms = maps / len(maps)
    inner = M.smooth(terms.sum(axis=0), sigma)
    top = float(inner.max())
    inner = inner / top if top > 0 else inner
    outer = float((inner + class_map).max()) or 1.0
    return Parts(class_map / outer, terms, 1.0, sigma, top * outer)


def _refine_parts(maps, *, sigma, class_map, **_) -> Parts:
    return _linear_parts(maps * class_map**2 / len(maps), sigma, post=REFINE_LIFT * (1.0 - class_map), base=class_map)


@register_rule("refine_cam", uses_class_map=True, parts=_refine_parts, threshold=0.54)
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


@register_rule("gate_cam", uses_class_map=True, threshold=0.36,
               parts=lambda maps, *, sigma, class_map, **_: _cam_combine_parts(maps * class_map, sigma, class_map))
def gate_cam(maps, *, sigma, class_map, **_):
    """Each neuron map times the class map, averaged, smoothed, plus the class map."""
    return _cam_combine(maps * class_map, sigma, class_map)


@register_rule("sum_cam", uses_class_map=True, threshold=0.46,
               parts=lambda maps, *, sigma, class_map, **_: _cam_combine_parts(maps, sigma, class_map))
def sum_cam(maps, *, sigma, class_map, **_):
    """The mean of the neuron maps, smoothed, plus the class map."""
    return _cam_combine(maps, sigma, class_map)


@register_rule("sum", threshold=0.28, parts=lambda maps, *, sigma, **_: _linear_parts(maps / len(maps), sigma))
def sum_(maps, *, sigma, **_):
    """The mean of the neuron maps, smoothed."""
    return M.normalize(M.smooth(maps.mean(axis=0), sigma))


def _max_parts(maps, *, sigma, **_) -> Parts:
    # each pixel's maximum belongs to the neuron that reaches it (the first on a tie)
    owner = np.argmax(maps, axis=0) == np.arange(len(maps))[:, None, None]
    return _linear_parts(maps * owner, sigma)


@register_rule("max", parts=_max_parts, threshold=0.36)
def max_(maps, *, sigma, **_):
    """The pixel-wise maximum of the neuron maps, smoothed."""
    return M.normalize(M.smooth(maps.max(axis=0), sigma))


def _weights(scores, k: int) -> np.ndarray:
    if scores is None or len(scores) != k:
        raise ValueError("combine='weighted' needs one rank score per neuron map")
    wts = np.clip(np.asarray(scores, dtype=np.float32), 0, None)
    return wts / wts.sum() if wts.sum() > 0 else np.full_like(wts, 1.0 / k)


# weighted: UNCHOSEN (the development dumps keep no rank scores to weight by)
@register_rule("weighted", parts=lambda maps, *, sigma, scores, **_: _linear_parts(
    _weights(scores, len(maps))[:, None, None] * maps, sigma))
def weighted(maps, *, sigma, scores, **_):
    """The neuron maps weighted by the positive part of their rank scores, smoothed."""
    return M.normalize(M.smooth(np.tensordot(_weights(scores, len(maps)), maps, axes=1), sigma))


def _union_parts(maps, *, blob_percentile, **_) -> Parts:
    # not smoothed; a pixel inside several blobs is shared equally among them
    blobs = np.stack([M.blob_mask(m, blob_percentile) for m in maps]).astype(np.float32)
    return Parts(np.zeros(maps.shape[1:], dtype=np.float32), blobs / np.maximum(blobs.sum(axis=0), 1.0), 1.0, 0.0, 1.0)


@register_rule("union", parts=_union_parts, threshold=0.5)  # a 0 / 1 map: any threshold in (0, 1]
def union(maps, *, blob_percentile, **_):
    """The authors' box: the union of each neuron map's blob (not smoothed)."""
    return np.any([M.blob_mask(m, blob_percentile) for m in maps], axis=0).astype(np.float32)


def _within_terms(maps, sigma, class_map) -> tuple[np.ndarray, np.ndarray, float]:
    """``(weight, g, v)`` of ``"within_cam"``: the region times the class map's power, the
    smoothed mean neuron map times that weight, and ``g`` at the class map's peak (0 when the
    class map is all zero)."""
    weight = _cam_region(class_map) * class_map**WITHIN_POWER
    g = M.smooth(maps.mean(axis=0), sigma) * weight
    at = M.peak(class_map)
    return weight, g, float(g[at]) if at is not None else 0.0


def _within_parts(maps, *, sigma, class_map, **_) -> Parts:
    # the map is (min(g / v, 1) + TIE * cam) / (1 + TIE): linear in the smoothed maps with the
    # weight / (max(g, v) * (1 + TIE)), which is exact on the capped plateau too
    weight, g, v = _within_terms(maps, sigma, class_map)
    if v <= 0:  # the neurons are silent at the class map's peak: the class map alone
        return Parts(class_map.astype(np.float32), maps / len(maps), 0.0, sigma, 1.0)
    base = (WITHIN_TIE * class_map / (1 + WITHIN_TIE)).astype(np.float32)
    post = (weight / (np.maximum(g, v) * (1 + WITHIN_TIE))).astype(np.float32)
    return Parts(base, maps / len(maps), post, sigma, 1.0)


def _cam_region(class_map: np.ndarray) -> np.ndarray:
    """The connected component of ``class_map >= WITHIN_REGION`` (of its max) that holds its
    peak, grown by :data:`WITHIN_GROW` px at 224 px (scaled with the map's short side)."""
    region = M.select_components(M.threshold_mask(class_map, WITHIN_REGION), "peak", class_map)
    steps = round(WITHIN_GROW * min(class_map.shape) / 224)
    return (ndimage.binary_dilation(region, iterations=steps) if steps > 0 else region).astype(np.float32)


@register_rule("within_cam", uses_class_map=True, parts=_within_parts, threshold=0.18)
def within_cam(maps, *, sigma, class_map, **_):
    """The neurons' map inside the class map's region, capped at its level at the class map's peak."""
    # The class map says where: its peak (the map's peak, by construction) and the component of
    # its upper part that holds it. The neurons say what: inside that region the map is the
    # smoothed mean of the k neuron maps weighted by the class map, divided by its value at the
    # class map's peak and capped at 1, so the box at a threshold is where the neurons fire at
    # least that share of what they fire at the class's peak. A tie-break of TIE * cam keeps the
    # class map's peak the single maximum.
    _, g, v = _within_terms(maps, sigma, class_map)
    if v <= 0:  # the neurons are silent at the class map's peak: the class map alone
        return class_map.astype(np.float32)
    return ((np.minimum(g / v, 1.0) + WITHIN_TIE * class_map) / (1 + WITHIN_TIE)).astype(np.float32)


WITHIN_REGION = 0.5
"""``"within_cam"``: the class-map level (a fraction of its max) whose peak component the neurons
draw in."""
WITHIN_GROW = 8
"""``"within_cam"``: how far the region grows beyond the class map's level (pixels at 224 px, a
4-connected dilation), so the neurons may draw a little past it."""
WITHIN_POWER = 1.0
"""``"within_cam"``: the power of the class map that weights the neurons' map inside the region."""
WITHIN_TIE = 1e-3
"""``"within_cam"``: the class map's weight that breaks ties on the capped plateau, so the
map's single peak is the class map's."""


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
    r, maps, cam, s = _prepared(neuron_maps, rule, sigma, class_map)
    if maps.shape[0] == 0:
        return cam if cam is not None else np.zeros(maps.shape[-2:], dtype=np.float32)
    return r.fn(maps, sigma=s, scores=scores, class_map=cam, blob_percentile=blob_percentile)


def combine_parts(
    neuron_maps: np.ndarray,
    *,
    rule: str = "sum",
    scores: Sequence[float] | None = None,
    sigma: float | None = None,
    blob_percentile: float = 80.0,
    class_map: np.ndarray | None = None,
) -> Parts | None:
    """:func:`combine_maps`' map as :class:`Parts` (``base + parts.maps().sum(0)`` is the map, to
    float rounding); ``None`` for a rule registered without parts. Same arguments as
    :func:`combine_maps`."""
    r, maps, cam, s = _prepared(neuron_maps, rule, sigma, class_map)
    if r.parts is None:
        return None
    if maps.shape[0] == 0:
        base = cam if cam is not None else np.zeros(maps.shape[-2:], dtype=np.float32)
        return Parts(base, maps, 1.0, s, 1.0)
    return r.parts(maps, sigma=s, scores=scores, class_map=cam, blob_percentile=blob_percentile)


def _prepared(neuron_maps, rule: str, sigma, class_map):
    """The rule, the maps as float32, the class map scaled to max 1 (``None`` when the rule does
    not use it) and the resolved sigma; the checks of :func:`combine_maps`."""
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
    return r, maps, cam, (M.default_sigma(shape) if sigma is None else sigma)


def neuron_shares(explanation: Explanation) -> dict[str, Any] | None:
    """How much of the box each neuron drew: the share of the map's mass inside the box that
    comes from the class map alone and from each neuron's weighted map (:func:`combine_parts`).

    Returns:
        ``{"class_map": share, "neurons": {rank: share}}``, the shares summing to 1 (a neuron left
        out of ``params["enabled"]`` draws 0; ``class_map`` is 0 for the rules that do not use
        it); ``None`` without neuron maps, without a box, or for a rule without parts.
    """
    e = explanation
    if e.neuron_maps is None or e.neurons is None or e.box is None:
        return None
    ranks = [n.rank for n in e.neurons]
    enabled = e.params.get("enabled", ranks)
    idx = [ranks.index(r) for r in enabled]
    split = combine_parts(e.neuron_maps[idx], rule=e.params["combine"], scores=[e.neurons[i].score for i in idx],
                          sigma=e.params.get("sigma"), class_map=e.class_map)
    if split is None:
        return None
    x0, y0, x1, y1 = e.box
    base, drawn = split.box_masses(e.box, float(e.saliency[y0:y1, x0:x1].sum(dtype=np.float64)))
    total = base + float(drawn.sum())
    if total <= 0:
        return None
    by_rank = dict.fromkeys(ranks, 0.0) | {r: float(d) / total for r, d in zip(enabled, drawn)}
    return {"class_map": base / total, "neurons": by_rank}


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
