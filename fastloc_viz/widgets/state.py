"""The explorer's state: what the user asked for, what is shown, and what a change costs.

Pure: no ipywidgets, plotly or torch, and no method named. :class:`ExplorerState` takes the
``explain`` and ``recombine`` callables and ``method_of`` (a method name -> its registered
:class:`~fastloc_viz.Method`) as arguments, so it is tested with fakes and no model
(``tests/test_explorer_state.py``).

Settings: ``method``, ``target``, ``layer``, ``enabled`` (the neurons in the map) and the
method's own parameters. What a change costs is the registry's word: a change of method,
target, layer or of a parameter in the method's ``pass_settings()`` needs a new ``explain``
call unless the cache holds that explanation; a change of ``enabled`` or of a parameter in
its ``recombinable`` only recombines the cached maps. :meth:`want` records a change and
applies the resets (a change that needs a pass re-enables every neuron; a method switch takes
the new method's defaults for its recombinable parameters); :meth:`apply` is the one
code path that brings what is shown to what is wanted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CACHE_SIZE", "FIXED", "ExplorerState"]

FIXED = ("method", "target", "layer", "enabled")
"""The settings of every method (the rest are the method's parameters)."""
CACHE_SIZE = 12

# what a change costs, from cheapest to dearest
NOTHING, RECOMBINE, CACHED, EXPLAIN = "nothing", "recombine", "cached", "explain"


class ExplorerState:
    """Wanted vs applied settings, the cache of explanations, and the one way to apply.

    Args:
        settings: the starting wanted settings: ``method`` and any of ``target``, ``layer``,
            ``enabled`` (``None``: the top-1 class, the default layer, all neurons) and the
            method's parameters (missing: the method's defaults).
        explain: ``explain(method=, target=, layer=, **params) -> Explanation``.
        recombine: ``recombine(base, enabled, **recombinable params) -> Explanation``.
        method_of: method name -> an object with ``defaults()``, ``pass_settings()`` and
            ``recombinable`` (the registered :class:`~fastloc_viz.Method`).
        stats: a dict whose ``explain_calls``, ``recombine_calls`` and ``explain_s`` this
            state keeps up to date (the widget's :attr:`stats`).
        cache_size: explanations kept (least recently used dropped).

    Attributes:
        wanted: the latest settings asked for.
        applied: the settings shown (target, layer and enabled resolved).
        base: the explanation with all k neurons; ``current``: after recombination.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        explain: Callable[..., Any],
        recombine: Callable[..., Any],
        method_of: Callable[[str], Any],
        stats: dict[str, Any] | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._explain = explain
        self._recombine = recombine
        self._method_of = method_of
        self.stats = stats if stats is not None else {}
        for name, empty in (("explain_calls", 0), ("recombine_calls", 0), ("explain_s", [])):
            self.stats.setdefault(name, empty)
        self.cache_size = cache_size
        self.cache: OrderedDict[tuple, Any] = OrderedDict()
        method = settings["method"]
        self._check_names(method, settings)
        start = {"method": method, "target": None, "layer": None, "enabled": None, **method_of(method).defaults()}
        self.wanted: dict[str, Any] = {**start, **settings}
        self.applied: dict[str, Any] = {}
        self.base: Any = None
        self.current: Any = None

    # ------------------------------------------------------------------ the registry's word
    def heavy(self, method: str) -> tuple[str, ...]:
        """The settings whose change needs an explain call (unless cached)."""
        return ("method", "target", "layer", *self._method_of(method).pass_settings())

    def light(self, method: str) -> tuple[str, ...]:
        """The method's parameters that only recombine the cached maps (and ``enabled``)."""
        return tuple(self._method_of(method).recombinable)

    def _check_names(self, method: str, settings: Mapping[str, Any]) -> None:
        allowed = (*FIXED, *self._method_of(method).defaults())
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise KeyError(f"unknown settings {unknown}; method {method!r} has {list(allowed)}")

    # ------------------------------------------------------------------ deciding
    def key(self, settings: Mapping[str, Any]) -> tuple:
        """The cache key: the settings that need a pass."""
        return tuple((name, settings[name]) for name in self.heavy(settings["method"]))

    def seed(self, explanation: Any) -> None:
        """Cache an explanation already computed for the wanted settings."""
        self.cache[self.key(self.wanted)] = explanation

    def want(self, **changes: Any) -> str:
        """Record a change of the wanted settings; return what applying them would cost.

        A change that needs a pass re-enables every neuron (unless ``enabled`` is given
        too). A change of method shows the new method as its defaults make it: its
        recombinable parameters (the combine rule, the threshold, ...) take its defaults,
        and of those that need a pass, one with the same default in both methods keeps its
        value (``k``), any other takes the new default (unless given with the switch).
        """
        method = changes.get("method", self.wanted["method"])
        self._check_names(method, changes)
        if method != self.wanted["method"]:
            new = {**self._switched(self.wanted["method"], method), **changes}
        else:
            new = self._method_of(method).settle(self.wanted, changes)
        if self.key(new) != self.key(self.wanted) and "enabled" not in changes:
            new["enabled"] = None
        self.wanted = new
        return self.cost()

    def _switched(self, old: str, new: str) -> dict[str, Any]:
        before, after = self._method_of(old).defaults(), self._method_of(new).defaults()
        light = self.light(new)
        out = {key: self.wanted[key] for key in FIXED}
        for name, default in after.items():
            keep = name not in light and name in before and before[name] == default
            out[name] = self.wanted[name] if keep else default
        out["method"] = new
        return out

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
        return enabled, *(s[name] for name in self.light(s["method"]))

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
        light = self.light(want["method"])
        try:
            base = self._base_for(want)
            ranks = [n.rank for n in base.neurons]
            enabled = ranks if want["enabled"] is None else list(want["enabled"])
            current = self._recombine(base, enabled, **{name: want[name] for name in light})
            self.stats["recombine_calls"] += 1
        except Exception:
            if self.wanted == want:
                self.wanted = dict(self.applied)
            raise
        self.base, self.current = base, current
        resolved = {name: current.params.get(name, want[name]) for name in light}
        self.applied = dict(want, target=base.target, layer=base.layer, enabled=tuple(current.params["enabled"]), **resolved)
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
        base = self._explain(**{name: value for name, value in want.items() if name != "enabled"})
        self.stats["explain_calls"] += 1
        self.stats["explain_s"].append(time.perf_counter() - t0)
        self.cache[key] = base
        # the resolved target and layer: asking for them again hits the cache
        self.cache[self.key(dict(want, target=base.target, layer=base.layer))] = base
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return base

    def describe(self, s: Mapping[str, Any] | None = None, class_names=None) -> str:
        """The settings that need a pass, in words, for error messages."""
        s = self.wanted if s is None else s
        if s["target"] is None:
            t = "top-1"
        else:
            t = repr(class_names[s["target"]]) if class_names is not None else str(s["target"])
        rest = ", ".join(f"{name}={s[name]!r}" for name in self.heavy(s["method"])[3:])
        return f"{s['method']} for class {t}, layer={s['layer']!r}" + (f", {rest}" if rest else "")
