"""MethodComparison's box-free views: lazy (nothing until opened), computed on a thread with
progress, dropped on a new class, errors in the error box. A tiny hand-set model keeps it fast."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from conftest import TinyNet

from fastloc_viz import METHODS, ModelBundle
from fastloc_viz.views.plots import method_color, method_label
from fastloc_viz.widgets import MethodComparison
from fastloc_viz.widgets import boxfree as panel_module


@pytest.fixture
def mc():
    bundle = ModelBundle(TinyNet("relu").eval(), class_names=[f"c{i}" for i in range(4)], input_size=(32, 32),
                         name="tiny")
    image = np.random.default_rng(2).random((32, 32, 3))
    w = MethodComparison(bundle, image, methods=("gradcam", "guided_backprop"), layer="conv3",
                         faithfulness_steps=4, debounce=0.01)
    yield w
    w.checks.wait()
    w.close()


def test_views_are_lazy_and_fill_when_opened(mc):
    p = mc.checks
    assert p.faithfulness is None and p.sanity is None
    assert p.widget in mc.widget.children and p.accordion.selected_index is None
    p.accordion.selected_index = 0  # opening the section starts the computation
    assert p.wait()
    assert set(p.faithfulness) == {"gradcam", "guided_backprop"} and p.sanity is None
    fig = p.boxes["faithfulness"].children[-1]
    assert isinstance(fig, go.FigureWidget)
    ranking = p.boxes["faithfulness"].children[1].value  # the methods shown, most faithful first
    order = sorted(p.faithfulness, key=lambda m: p.faithfulness[m]["deletion"].auc - p.faithfulness[m]["insertion"].auc)
    assert ranking.index(method_label(order[0])) < ranking.index(method_label(order[1]))
    assert {t.legendgroup: t.line.color for t in fig.data} == {m: method_color(m) for m in p.faithfulness}
    assert p.progress.layout.visibility == "hidden" and mc.error.layout.display == "none"

    p.buttons["sanity"].click()
    assert p.wait()
    r = p.sanity["guided_backprop"]
    assert r.depths == (1, 2, 3, 4) and r.target == mc.target  # TinyNet: 4 groups, all shown
    assert len(p.boxes["sanity"].children) == 4  # notes, the ranking, the strip, the curve
    ranking = p.boxes["sanity"].children[1].value
    order = sorted(p.sanity, key=lambda m: p.sanity[m].similarity)  # least similar after randomization first
    assert ranking.index(method_label(order[0])) < ranking.index(method_label(order[1]))


def test_new_class_drops_results_and_recomputes_the_open_section(mc):
    p = mc.checks
    p.compute("faithfulness")
    old = p.faithfulness["gradcam"]["deletion"].target
    p.accordion.selected_index = 0
    mc.target = (old + 1) % 4  # programmatic: synchronous; the open section recomputes
    assert p.wait()
    assert p.faithfulness["gradcam"]["deletion"].target == (old + 1) % 4


def test_an_error_is_shown_and_the_panel_keeps_working(mc, monkeypatch):
    p = mc.checks

    def boom(*a, **k):
        raise RuntimeError("no curves today")

    monkeypatch.setattr(panel_module, "faithfulness_of", boom)
    p.buttons["faithfulness"].click()
    assert p.wait()
    assert "no curves today" in mc.error.value and mc.error.layout.display == "block"
    assert p.faithfulness is None and not p.buttons["faithfulness"].disabled
    monkeypatch.undo()
    p.buttons["faithfulness"].click()
    assert p.wait()
    assert p.faithfulness is not None and mc.error.layout.display == "none"


def test_the_method_box_adds_and_removes_methods_and_the_checks_follow(mc):
    p = mc.checks
    p.compute("faithfulness")
    calls = mc.stats["explain_calls"]
    mc.method_box.value = ["gradcam", "layercam", "scorecam"]  # as a user edits the tags
    assert mc.wait()
    assert list(mc.explanations) == ["gradcam", "layercam", "scorecam"]
    assert mc.stats["explain_calls"] == calls + 2  # gradcam kept, two new ones computed
    assert p.faithfulness is None  # the checks belonged to the old set: recomputed on opening
    assert set(p.compute("faithfulness")) == {"gradcam", "layercam", "scorecam"}
    assert "Score-CAM" in str(mc.grid_fig.layout) and "Guided backprop" not in str(mc.grid_fig.layout)
    mc.method_box.value = []  # an empty box is refused, the methods stay
    assert mc.wait()
    assert list(mc.explanations) == ["gradcam", "layercam", "scorecam"] and "names no method" in mc.error.value
    assert list(mc.method_box.value) == ["gradcam", "layercam", "scorecam"]


def test_default_and_all(mc):
    bundle, image = mc.bundle, mc.image
    small = {"k": 3, "kmax": 4, "steps": 3, "samples": 2, "window": 16, "stride": 8}
    w = MethodComparison(bundle, image, layer="conv3", debounce=0.01, **small)
    try:
        assert w.methods == ("fastloc", "fastloc_rescored", "gradcam", "guided_backprop", "guided_gradcam")
        w.methods = "all"
        assert w.methods == tuple(METHODS) and list(w.explanations) == list(METHODS)
        heat = [t for t in w.grid_fig.data if t.type == "heatmap"]
        assert len(heat) == 14
    finally:
        w.close()
    with pytest.raises(ValueError, match="method='nope' is not one of"):
        MethodComparison(bundle, image, methods="gradcam,nope")
