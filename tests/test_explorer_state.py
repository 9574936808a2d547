"""The explorer's state without a model: a fake registry, explain and recombine record each
call, so these tests check which change costs what, the cache, the resets and errors in
seconds. The fake methods' names are nobody's: the state reads what a change costs from the
registry (``pass_settings()`` / ``recombinable``) and names no method."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from fastloc_viz.widgets.state import FIXED, ExplorerState
from fastloc_viz.widgets.worker import Debouncer


class FakeMethod:
    """What the state reads from a registered method."""

    def __init__(self, recombinable, **defaults):
        self.recombinable = recombinable
        self._defaults = defaults

    def defaults(self):
        return dict(self._defaults)

    def pass_settings(self):
        return tuple(n for n in self._defaults if n not in self.recombinable)

    def settle(self, before, changes):  # its defaults depend on nothing else
        return {**before, **changes}


BOXING = ("threshold", "combine")
REGISTRY = {
    "alpha": FakeMethod(BOXING, k=5, rank_grad="plain", threshold=0.54, combine="refine_cam"),
    "beta": FakeMethod(BOXING, k=5, rank_grad="plain", threshold=0.54, combine="refine_cam", kmax=None),
    "other": FakeMethod(BOXING, k=5, rank_grad="plain", threshold=0.4, combine="sum"),
    # a method with its own recombinable setting (gamma) and its own one that needs a pass
    "own": FakeMethod(("threshold", "gamma"), k=5, depth=1, threshold=0.5, gamma=1.0),
}
LIGHT_OF = {name: m.recombinable for name, m in REGISTRY.items()}


class Fakes:
    """``explain`` and ``recombine`` stand-ins; ``calls`` records every explain call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[dict] = []
        self.recombines: list[dict] = []
        self.delay = delay
        self.fail_explain: str | None = None
        self.fail_recombine: str | None = None
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def explain(self, **kw):
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.fail_explain:
                raise ValueError(self.fail_explain)
            self.calls.append(kw)
            target = 281 if kw["target"] is None else kw["target"]
            layer = "_blocks.15" if kw["layer"] is None else kw["layer"]
            neurons = [SimpleNamespace(rank=r) for r in range(1, kw["k"] + 1)]
            return SimpleNamespace(target=target, layer=layer, neurons=neurons, params=dict(kw), method=kw["method"])
        finally:
            with self._lock:
                self.running -= 1

    def recombine(self, base, enabled, **light):
        if self.fail_recombine:
            raise ValueError(self.fail_recombine)
        assert set(light) == set(LIGHT_OF[base.method])  # the method's recombinable settings, no other
        ranks = [n.rank for n in base.neurons]
        bad = [r for r in enabled if r not in ranks]
        if bad:
            raise ValueError(f"enabled ranks {bad} do not exist")
        self.recombines.append(light)
        return SimpleNamespace(
            base=base, target=base.target, layer=base.layer, neurons=base.neurons,
            params={**base.params, **light, "enabled": sorted(enabled)},
        )  # fmt: skip


def make(fakes: Fakes, method: str = "alpha", **over) -> ExplorerState:
    state = ExplorerState(
        {"method": method, **over}, explain=fakes.explain, recombine=fakes.recombine, method_of=REGISTRY.__getitem__,
        stats={},
    )
    state.apply()
    return state


def test_initial_apply_takes_the_methods_defaults_and_resolves_target_layer_neurons():
    f = Fakes()
    s = make(f)
    assert f.calls == [dict(method="alpha", target=None, layer=None, k=5, rank_grad="plain", threshold=0.54, combine="refine_cam")]
    assert s.applied["target"] == 281 and s.applied["layer"] == "_blocks.15"
    assert s.applied["enabled"] == (1, 2, 3, 4, 5) and s.applied["combine"] == "refine_cam"
    assert s.wanted == s.applied and not s.pending
    assert s.stats["explain_calls"] == 1 and s.stats["recombine_calls"] == 1
    assert set(s.applied) == set(FIXED) | set(REGISTRY["alpha"].defaults())


@pytest.mark.parametrize(
    "method, change, cost",
    [
        ("alpha", {"enabled": (1, 2)}, "recombine"),
        ("alpha", {"threshold": 0.6}, "recombine"),
        ("alpha", {"combine": "max"}, "recombine"),
        ("alpha", {"enabled": (1, 2, 3, 4, 5)}, "nothing"),  # the same as shown
        ("alpha", {"threshold": 0.54}, "nothing"),
        ("alpha", {"target": 281}, "nothing"),  # the resolved top-1 class is cached under its index
        ("alpha", {"target": 3}, "explain"),
        ("alpha", {"k": 3}, "explain"),
        ("beta", {"kmax": 20}, "explain"),
        ("alpha", {"layer": "_blocks.9"}, "explain"),
        ("alpha", {"rank_grad": "guided"}, "explain"),
        ("alpha", {"method": "beta"}, "explain"),
        ("own", {"gamma": 2.0}, "recombine"),  # its own recombinable setting
        ("own", {"depth": 3}, "explain"),  # its own setting that needs a pass
    ],
)
def test_which_change_costs_an_explain_call(method, change, cost):
    f = Fakes()
    s = make(f, method)
    assert s.want(**change) == cost
    assert s.apply() == cost
    assert len(f.calls) == (2 if cost == "explain" else 1)
    for key, value in change.items():
        assert s.applied[key] == value
    assert not s.pending


def test_light_changes_recombine_the_same_base():
    f = Fakes()
    s = make(f)
    base = s.base
    s.want(enabled=(2,), threshold=0.7, combine="max")
    s.apply()
    assert s.base is base and len(f.calls) == 1
    assert s.current.params["enabled"] == [2] and s.current.params["threshold"] == 0.7
    assert s.applied["combine"] == "max"


def test_cache_hits_going_back_and_lru_eviction():
    f = Fakes()
    s = make(f)
    s.want(k=3)
    s.apply()
    assert s.want(k=5) == "cached"
    assert s.apply() == "cached" and len(f.calls) == 2
    s.cache_size = 3
    for k in (6, 7, 8, 9):
        s.want(k=k)
        s.apply()
    assert len(s.cache) <= 3
    assert s.want(k=5) == "explain"  # evicted


def test_explain_gets_the_methods_own_parameters_only():
    f = Fakes()
    s = make(f, "alpha", k=7)
    s.want(method="beta")
    s.apply()
    assert "kmax" not in f.calls[0] and f.calls[1]["kmax"] is None and f.calls[1]["k"] == 7  # beta's default
    s.want(method="own", depth=2)
    s.apply()
    assert f.calls[2] == dict(method="own", target=281, layer="_blocks.15", k=7, depth=2, threshold=0.5, gamma=1.0)
    with pytest.raises(KeyError, match=r"unknown settings \['kmax'\]; method 'own' has"):
        s.want(kmax=3)


def test_a_heavy_change_re_enables_every_neuron():
    f = Fakes()
    s = make(f)
    s.want(enabled=(2,))
    s.apply()
    s.want(k=4)
    assert s.wanted["enabled"] is None
    s.apply()
    assert s.applied["enabled"] == (1, 2, 3, 4)
    s.want(k=5, enabled=(1,))  # unless enabled comes with it
    s.apply()
    assert s.applied["enabled"] == (1,)


def test_a_method_switch_takes_the_new_methods_defaults_for_how_maps_combine():
    f = Fakes()
    s = make(f)
    s.want(combine="max", threshold=0.7, k=3, rank_grad="guided")
    s.apply()
    s.want(method="other")  # its own default rule and threshold; k and rank_grad: kept
    assert (s.wanted["combine"], s.wanted["threshold"], s.wanted["k"], s.wanted["rank_grad"]) == ("sum", 0.4, 3, "guided")
    s.apply()
    s.want(method="alpha")  # back: the defaults again, not the rule cached before
    s.apply()
    assert s.applied["combine"] == "refine_cam" and s.current.params["combine"] == "refine_cam"
    s.want(combine="max", threshold=0.7)
    s.apply()
    s.want(method="beta")  # the same defaults, and still the new method's: not the shown ones
    assert (s.wanted["combine"], s.wanted["threshold"], s.wanted["kmax"], s.wanted["k"]) == ("refine_cam", 0.54, None, 3)
    s.want(method="own")  # no default in common: its own (depth), k kept
    assert (s.wanted["depth"], s.wanted["gamma"], s.wanted["k"]) == (1, 1.0, 3) and "combine" not in s.wanted
    s.want(method="other", combine="max")  # a value given with the switch wins
    s.apply()
    assert s.applied["combine"] == "max"


@pytest.mark.parametrize("which", ["explain", "recombine"])
def test_an_error_leaves_the_shown_state_as_it_was(which):
    f = Fakes()
    s = make(f)
    before = (dict(s.applied), s.base, s.current, dict(s.cache))
    if which == "explain":
        f.fail_explain = "no such layer"
        s.want(layer="_blocks.99")
    else:
        f.fail_recombine = "boom"
        s.want(enabled=(1,))
    with pytest.raises(ValueError):
        s.apply()
    assert (dict(s.applied), s.base, s.current, dict(s.cache)) == before
    assert s.wanted == s.applied and not s.pending
    f.fail_explain = f.fail_recombine = None
    s.want(enabled=(2, 3))  # and it keeps working
    s.apply()
    assert s.applied["enabled"] == (2, 3)


def test_bad_ranks_raise_and_keep_state():
    f = Fakes()
    s = make(f)
    s.want(enabled=(1, 9))
    with pytest.raises(ValueError, match="9"):
        s.apply()
    assert s.applied["enabled"] == (1, 2, 3, 4, 5)
    with pytest.raises(KeyError, match="colour"):
        s.want(colour="red")


def test_a_burst_ends_in_the_last_wanted_state_with_one_computation_in_flight():
    f = Fakes(delay=0.05)
    s = make(f)

    def work():  # no lock of its own: one computation in flight is the debouncer's doing
        if s.pending:
            s.apply()

    worker = Debouncer(work, delay=0.02)
    try:
        for k in (4, 6, 8, 7, 9, 11, 10, 6):  # a slider being dragged
            s.want(k=k)
            worker.poke()
            time.sleep(0.01)
        time.sleep(0.08)  # a computation is in flight now ...
        for k in (3, 2):  # ... and more events come
            s.want(k=k)
            worker.poke()
        assert worker.wait(10)
    finally:
        worker.stop()
    assert s.applied["k"] == 2 and s.wanted == s.applied
    assert f.most_running == 1
    assert len(f.calls) - 1 <= 2  # at most the one in flight plus the final one


def test_describe_names_the_settings_that_need_a_pass():
    s = make(Fakes(), "own", depth=2)
    assert s.describe() == "own for class 281, layer='_blocks.15', k=5, depth=2"
    assert s.describe(dict(s.wanted, target=None)).startswith("own for class top-1")
