"""The explorer's state without a model: a fake explain and recombine record each call, so
these tests check which change costs what, the cache, the resets and errors in seconds."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from fastloc_viz.widgets.state import KEYS, ExplorerState, explain_kwargs
from fastloc_viz.widgets.worker import Debouncer

RULE = {"fastloc": "refine_cam", "fastloc_rescored": "refine_cam", "other": "sum"}


class Fakes:
    """``explain`` and ``recombine`` stand-ins; ``calls`` records every explain call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[dict] = []
        self.recombines = 0
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

    def recombine(self, base, enabled, *, threshold, combine):
        if self.fail_recombine:
            raise ValueError(self.fail_recombine)
        ranks = [n.rank for n in base.neurons]
        bad = [r for r in enabled if r not in ranks]
        if bad:
            raise ValueError(f"enabled ranks {bad} do not exist")
        self.recombines += 1
        return SimpleNamespace(
            base=base, target=base.target, layer=base.layer, neurons=base.neurons,
            params={**base.params, "enabled": sorted(enabled), "threshold": threshold, "combine": combine},
        )  # fmt: skip


def settings(**over):
    s = dict(method="fastloc", target=None, k=5, kmax=None, layer=None, rank_grad="plain", threshold=0.3, combine=None, enabled=None)
    s.update(over)
    return s


def make(fakes: Fakes, **over) -> ExplorerState:
    state = ExplorerState(
        settings(**over), explain=fakes.explain, recombine=fakes.recombine, default_rule=RULE.__getitem__, stats={}
    )
    state.apply()
    return state


def test_initial_apply_resolves_target_layer_rule_and_neurons():
    f = Fakes()
    s = make(f)
    assert len(f.calls) == 1 and f.calls[0]["kmax"] == 10 and f.calls[0]["combine"] == "refine_cam"
    assert s.applied["target"] == 281 and s.applied["layer"] == "_blocks.15"
    assert s.applied["enabled"] == (1, 2, 3, 4, 5) and s.applied["combine"] == "refine_cam"
    assert s.wanted == s.applied and not s.pending
    assert s.stats["explain_calls"] == 1 and s.stats["recombine_calls"] == 1
    assert set(s.applied) == set(KEYS)


@pytest.mark.parametrize(
    "change, cost",
    [
        ({"enabled": (1, 2)}, "recombine"),
        ({"threshold": 0.6}, "recombine"),
        ({"combine": "max"}, "recombine"),
        ({"enabled": (1, 2, 3, 4, 5)}, "nothing"),  # the same as shown
        ({"threshold": 0.3}, "nothing"),
        ({"target": 281}, "nothing"),  # the resolved top-1 class is cached under its index
        ({"target": 3}, "explain"),
        ({"k": 3}, "explain"),
        ({"kmax": 20}, "explain"),
        ({"layer": "_blocks.9"}, "explain"),
        ({"rank_grad": "guided"}, "explain"),
        ({"method": "fastloc_rescored"}, "explain"),
    ],
)
def test_which_change_costs_an_explain_call(change, cost):
    f = Fakes()
    s = make(f)
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


def test_kmax_follows_the_method():
    assert explain_kwargs(settings(k=7))["kmax"] == 10
    assert explain_kwargs(settings(k=12))["kmax"] == 12
    assert explain_kwargs(settings(k=7, method="fastloc_rescored"))["kmax"] == 14
    assert explain_kwargs(settings(k=7, kmax=30, method="fastloc_rescored"))["kmax"] == 30
    assert explain_kwargs(settings(), {"sigma": 4})["sigma"] == 4


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


def test_a_method_switch_takes_that_methods_default_rule():
    f = Fakes()
    s = make(f)
    s.want(combine="max")
    s.apply()
    s.want(method="other")
    assert s.wanted["combine"] == "sum"
    s.apply()
    s.want(method="fastloc")  # back: the default again, not the rule cached before
    s.apply()
    assert s.applied["combine"] == "refine_cam" and s.current.params["combine"] == "refine_cam"
    s.want(method="other", combine="max")  # unless combine comes with it
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
    with pytest.raises(KeyError):
        s.want(colour="red")


def test_a_burst_ends_in_the_last_wanted_state_with_one_computation_in_flight():
    f = Fakes(delay=0.05)
    s = make(f)

    def work():  # no lock of its own: one computation in flight is the Debouncer's promise
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
