"""The explorer's state: what the user asked for, what is shown, and what a change costs.

Pure: no ipywidgets, plotly or torch. :class:`ExplorerState` takes the ``explain`` and
``recombine`` callables (and the registry's default rule per method) as arguments, so it is
tested with fakes and no model (``tests/test_explorer_state.py``).

Settings (:data:`KEYS`): the *heavy* ones (:data:`HEAVY`: method, target, k, kmax, layer,
rank_grad) need a new ``explain`` call unless the cache holds that explanation; the *light*
ones (enabled, threshold, combine) only recombine the cached neuron maps. :meth:`want`
records a change and applies the resets (a heavy change re-enables every neuron, a method
switch takes that method's default rule); :meth:`apply` is the one code path that brings
what is shown to what is wanted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CACHE_SIZE", "HEAVY", "KEYS", "LIGHT", "ExplorerState", "explain_kwargs"]

HEAVY = ("method", "target", "k", "kmax", "layer", "rank_grad")
LIGHT = ("enabled", "threshold", "combine")
KEYS = HEAVY + LIGHT
CACHE_SIZE = 12

# what a change costs, from cheapest to dearest
NOTHING, RECOMBINE, CACHED, EXPLAIN = "nothing", "recombine", "cached", "explain"


def explain_kwargs(want: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of the ``explain`` call for the settings ``want``.

    ``kmax`` defaults to ``max(10, 2k)`` for ``fastloc_rescored`` (twice as many candidates
    as kept) and to ``max(k, 10)`` otherwise.
    """
    kwargs = dict(extra or {})
    if want["kmax"] is not None:
        kwargs["kmax"] = want["kmax"]
    elif want["method"] == "fastloc_rescored":
        kwargs["kmax"] = max(10, 2 * want["k"])
    else:
        kwargs["kmax"] = max(want["k"], 10)
    if want.get("combine") is not None:
        kwargs["combine"] = want["combine"]
    kwargs.update(
        method=want["method"],
        target=want["target"],
        layer=want["layer"],
        k=want["k"],
        rank_grad=want["rank_grad"],
        threshold=want["threshold"],
    )
    return kwargs


class ExplorerState:
    """Wanted vs applied settings, the cache of explanations, and the one way to apply.

    Args:
        settings: the starting wanted settings (every key of :data:`KEYS`; ``target``,
            ``layer``, ``kmax``, ``combine`` and ``enabled`` may be ``None``: the top-1
            class, the default layer, the method's default, its default rule, all neurons).
        explain: ``explain(**kwargs) -> Explanation`` with :func:`explain_kwargs`' keywords.
        recombine: ``recombine(base, enabled, threshold=, combine=) -> Explanation``.
        default_rule: method name -> its default combine rule (the registry's).
        extra: more keyword arguments for every ``explain`` call (sigma, passes, ...).
        stats: a dict whose ``explain_calls``, ``recombine_calls`` and ``explain_s`` this
            state keeps up to date (the widget's :attr:`stats`).
        cache_size: explanations kept (least recently used dropped).

    Attributes:
        wanted: the latest settings asked for.
        applied: the settings shown (target, layer, combine and enabled resolved).
        base: the explanation with all k neurons; ``current``: after recombination.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        explain: Callable[..., Any],
        recombine: Callable[..., Any],
        default_rule: Callable[[str], str],
        extra: Mapping[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        missing = set(KEYS) - set(settings)
        if missing:
            raise ValueError(f"settings lack {sorted(missing)}")
        self._explain = explain
        self._recombine = recombine
        self._default_rule = default_rule
        self.extra = dict(extra or {})
        self.stats = stats if stats is not None else {}
        for name, empty in (("explain_calls", 0), ("recombine_calls", 0), ("explain_s", [])):
            self.stats.setdefault(name, empty)
        self.cache_size = cache_size
        self.cache: OrderedDict[tuple, Any] = OrderedDict()
        self.wanted: dict[str, Any] = {key: settings[key] for key in KEYS}
        if self.wanted["combine"] is None:
            self.wanted["combine"] = default_rule(self.wanted["method"])
        self.applied: dict[str, Any] = {}
        self.base: Any = None
        self.current: Any = None

    # ------------------------------------------------------------------ deciding
    @staticmethod
    def key(settings: Mapping[str, Any]) -> tuple:
        """The cache key: the heavy settings."""
        return tuple(settings[key] for key in HEAVY)

    def seed(self, explanation: Any) -> None:
        """Cache an explanation already computed for the wanted settings."""
        self.cache[self.key(self.wanted)] = explanation

    def want(self, **changes: Any) -> str:
        """Record a change of the wanted settings; return what applying them would cost.

        A change of a heavy setting re-enables every neuron (unless ``enabled`` is given
        too); a change of method takes that method's default rule (unless ``combine`` is).
        """
        unknown = set(changes) - set(KEYS)
        if unknown:
            raise KeyError(f"unknown settings {sorted(unknown)}; the explorer has {list(KEYS)}")
        new = {**self.wanted, **changes}
        if any(new[key] != self.wanted[key] for key in HEAVY) and "enabled" not in changes:
            new["enabled"] = None
        if new["method"] != self.wanted["method"] and "combine" not in changes:
            new["combine"] = self._default_rule(new["method"])
        if new.get("combine") is None:
            new["combine"] = self._default_rule(new["method"])
        self.wanted = new
        return self.cost()

    def cost(self, want: Mapping[str, Any] | None = None) -> str:
        """What bringing the shown state to ``want`` (default: :attr:`wanted`) costs:
        ``"nothing"``, ``"recombine"`` (cached neuron maps), ``"cached"`` (another cached
        explanation, recombined) or ``"explain"`` (a new explain call)."""
        want = self.wanted if want is None else want
        if not self.applied or self.key(want) != self.key(self.applied):
            return CACHED if self.key(want) in self.cache else EXPLAIN
        if self._light(want) == self._light(self.applied):
            return NOTHING
        return RECOMBINE

    @property
    def pending(self) -> bool:
        """Whether the wanted settings differ from the shown ones."""
        return self.cost() != NOTHING

    def _light(self, s: Mapping[str, Any]) -> tuple:
        enabled = s["enabled"]
        if enabled is None and self.base is not None:
            enabled = tuple(n.rank for n in self.base.neurons)
        enabled = None if enabled is None else tuple(sorted(enabled))
        return enabled, float(s["threshold"]), s["combine"]

    # ------------------------------------------------------------------ applying
    def apply(self) -> str:
        """Bring the shown state to the wanted one; return what it cost.

        Raises what ``explain`` or ``recombine`` raise, leaving the shown state as it was
        (and the wanted one reset to it, unless a newer change came in meanwhile).
        """
        want = dict(self.wanted)
        cost = self.cost(want)
        if cost == NOTHING:
            self.wanted = dict(self.applied)
            return cost
        try:
            base = self._base_for(want)
            ranks = [n.rank for n in base.neurons]
            enabled = ranks if want["enabled"] is None else list(want["enabled"])
            current = self._recombine(base, enabled, threshold=want["threshold"], combine=want["combine"])
            self.stats["recombine_calls"] += 1
        except Exception:
            if self.wanted == want:
                self.wanted = dict(self.applied)
            raise
        self.base, self.current = base, current
        self.applied = dict(
            want,
            target=base.target,
            layer=base.layer,
            combine=current.params["combine"],
            enabled=tuple(current.params["enabled"]),
        )
        if self.wanted == want:  # no newer change came in meanwhile
            self.wanted = dict(self.applied)
        return cost

    def _base_for(self, want: Mapping[str, Any]) -> Any:
        key = self.key(want)
        base = self.cache.get(key)
        if base is not None:
            self.cache.move_to_end(key)
            return base
        t0 = time.perf_counter()
        base = self._explain(**explain_kwargs(want, self.extra))
        self.stats["explain_calls"] += 1
        self.stats["explain_s"].append(time.perf_counter() - t0)
        self.cache[key] = base
        # the resolved target and layer: asking for them again hits the cache
        self.cache[self.key(dict(want, target=base.target, layer=base.layer))] = base
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return base

    def describe(self, s: Mapping[str, Any] | None = None, class_names=None) -> str:
        """The heavy settings in words, for error messages."""
        s = self.wanted if s is None else s
        if s["target"] is None:
            t = "top-1"
        else:
            t = repr(class_names[s["target"]]) if class_names is not None else str(s["target"])
        return f"{s['method']} for class {t}, k={s['k']}, layer={s['layer']!r}, rank_grad={s['rank_grad']!r}"
