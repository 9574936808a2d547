"""NeuronExplorer and MethodComparison without a browser: set values, assert the model of
the widget changed (EfficientNet-Lite0 on a scikit-image photo)."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import torch
from conftest import require

import fastloc_viz as fv
from fastloc_viz import widgets
from fastloc_viz.widgets import MethodComparison, NeuronExplorer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def bundle():
    return fv.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def photo():
    return fv.sample_image("chelsea")


@pytest.fixture(scope="module")
def explorer(bundle, photo):
    return NeuronExplorer(bundle, photo, debounce=0.05)


class PassCounter:
    """Counts backward passes (every torch.autograd.grad / .backward goes through the
    autograd engine entry point patched here) and forward passes of the model."""

    def __init__(self, monkeypatch, model):
        self.backward = 0
        self.forward = 0
        real = torch.autograd._engine_run_backward

        def counting(*args, **kwargs):
            self.backward += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "_engine_run_backward", counting)
        self._model = model
        self._handle = model.register_forward_pre_hook(self._pre)

    def _pre(self, *_):
        self.forward += 1

    def close(self):
        self._handle.remove()


@pytest.fixture
def counter(monkeypatch, bundle, explorer):
    # the explorer computes its neurons' drops (fv.ablate) on its worker after each new
    # explanation: let that finish, so it is not counted as a pass of the code under test
    assert explorer.wait(300)
    c = PassCounter(monkeypatch, bundle.model)
    yield c
    c.close()


def test_counter_sees_real_passes(bundle, photo, counter):
    # the counter must be able to fail the no-backward assertions below
    fv.explain(bundle, photo, k=2)
    assert counter.backward >= 3 and counter.forward >= 1


def test_initial_state(explorer):
    e = explorer.explanation
    assert e.method == "fastloc" and explorer.k == 5 and explorer.enabled == (1, 2, 3, 4, 5)
    assert explorer.layer == e.layer and explorer.target == e.target == e.top5[0].index
    assert len(explorer.cards_box.children) == 1 + 5  # the class map, then the neurons
    assert explorer.class_box.value.startswith("★ ") and explorer.class_box.options[0].startswith(
        "★ "
    )
    assert len(explorer.class_box.options) == len(fv.load_model("efficientnet_lite0").class_names)
    assert explorer.error.layout.display == "none"


def test_setting_enabled_changes_map_and_box_without_any_pass(explorer, counter):
    # the neurons alone: under the default rule the class map keeps this close-up's box whole
    explorer.combine_dropdown.value = "sum"
    explorer.enabled = (1, 2, 3, 4, 5)
    full = explorer.explanation
    z_full = np.asarray(explorer.overlay_fig.data[1].z).copy()
    explorer.enabled = (3,)
    one = explorer.explanation
    assert counter.backward == 0 and counter.forward == 0
    assert explorer.enabled == (3,)
    assert not np.allclose(one.saliency, full.saliency)
    assert one.box != full.box
    np.testing.assert_allclose(one.saliency, fv.recombine(full, [3]).saliency)
    # the figure the browser draws changed too, and the cards show the selection
    assert not np.allclose(np.asarray(explorer.overlay_fig.data[1].z), z_full)
    shape = explorer.overlay_fig.layout.shapes[0]
    assert (shape.x0 + 0.5, shape.y0 + 0.5, shape.x1 + 0.5, shape.y1 + 0.5) == one.box
    checks = [c["check"].value for c in explorer._cards[:5]]
    assert checks == [False, False, True, False, False]
    explorer.enabled = (1, 2, 3, 4, 5)
    explorer.combine_dropdown.value = "refine_cam"
    assert counter.backward == 0 and counter.forward == 0


def test_clicking_checkboxes_is_instant_and_runs_no_pass(explorer, counter):
    before = explorer.explanation
    times = []
    for rank in (2, 4, 2, 4):
        check = explorer._cards[rank - 1]["check"]
        t0 = time.perf_counter()
        check.value = not check.value
        times.append((time.perf_counter() - t0) * 1000)
        if rank == 2 and not check.value:
            assert explorer.enabled == (1, 3, 4, 5)
    assert explorer.enabled == (1, 2, 3, 4, 5)
    np.testing.assert_allclose(explorer.explanation.saliency, before.saliency)
    assert counter.backward == 0 and counter.forward == 0
    assert explorer.stats["explain_calls"] >= 1
    # the target: a toggle (recombine + redraw) under 100 ms on this CPU
    assert statistics.median(times) < 100, times


def test_threshold_and_combine_rebox_without_any_pass(explorer, counter):
    explorer.threshold_slider.value = 0.7
    high = explorer.explanation.box
    explorer.threshold_slider.value = 0.1
    low = explorer.explanation.box
    assert explorer.threshold == pytest.approx(0.1)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert area(low) > area(high)
    explorer.combine_dropdown.value = "max"
    assert explorer.explanation.params["combine"] == "max"
    explorer.combine_dropdown.value = "sum"
    explorer.threshold = 0.3
    assert counter.backward == 0 and counter.forward == 0


def test_setting_target_by_name_changes_the_neurons(explorer, bundle):
    first = explorer.explanation
    other = next(p for p in first.top5 if p.index != first.target)
    explorer.target = other.name
    e = explorer.explanation
    assert explorer.target == other.index and e.target_name == other.name
    assert [(n.channel, n.y, n.x, n.score) for n in e.neurons] != [
        (n.channel, n.y, n.x, n.score) for n in first.neurons
    ]
    assert explorer.class_box.value == f"★ {other.name} ({other.index})"
    explorer.target = 0  # by index, a class outside the top-5
    assert explorer.target == 0 and explorer.class_box.value == f"{bundle.class_names[0]} (0)"
    explorer.target = first.target  # cached: no new explain call
    calls = explorer.stats["explain_calls"]
    explorer.target = other.index
    explorer.target = first.target
    assert explorer.stats["explain_calls"] == calls


def test_class_selector_and_top5_buttons(explorer):
    first = explorer.target
    label = next(o for o in explorer.class_box.options if o.endswith("(1)"))  # goldfish
    explorer.class_box.value = label
    assert explorer.wait(60)
    assert explorer.target == 1
    explorer.top5_box.children[0].click()  # back to the top-1 prediction
    assert explorer.wait(60)
    assert explorer.target == explorer.explanation.top5[0].index == first


def test_setting_k_changes_the_card_count(explorer):
    explorer.k = 3
    assert explorer.k == 3 and len(explorer.cards_box.children) == 1 + 3
    assert explorer.k_slider.value == 3 and len(explorer.explanation.neuron_maps) == 3
    assert len(explorer.bars_fig.data[0].y) == 3
    explorer.k = 5
    assert len(explorer.cards_box.children) == 1 + 5


def test_setting_layer(explorer):
    explorer.layer = "_blocks.12"
    assert explorer.layer == "_blocks.12" and explorer.layer_dropdown.value == "_blocks.12"
    assert explorer.explanation.layer_shape[1:] == (7, 7)  # a stride-32 block
    explorer.layer = "_blocks.10"
    assert explorer.explanation.layer_shape == (112, 14, 14)  # the poster's stride 16
    explorer.layer = "_blocks.15"  # the default


def test_method_and_rank_grad_switches(explorer):
    explorer.rank_grad = "plain"
    assert explorer.rank_grad == "plain" and explorer.rank_grad_buttons.value == "plain"
    assert explorer.explanation.params["rank_grad"] == "plain"
    explorer.rank_grad = "guided"
    explorer.method_buttons.value = "fastloc_rescored"  # through the control
    assert explorer.wait(120)
    e = explorer.explanation
    assert explorer.method == e.method == "fastloc_rescored"
    assert all(n.rescored is not None for n in e.neurons)
    assert [t.name for t in explorer.bars_fig.data if t.visible is not False] == [
        "rank score",
        "rescored logit",
    ]
    assert explorer.combine_dropdown.value == e.params["combine"] == "refine_cam"
    explorer.method = "fastloc"
    assert explorer.explanation.params["combine"] == "refine_cam"  # the default, not a cached rule
    assert [t.visible for t in explorer.bars_fig.data][1:] == [False]


def test_programmatic_errors_raise_and_keep_state(explorer):
    before = (explorer.target, explorer.k, explorer.layer, explorer.enabled)
    with pytest.raises(LookupError, match="not a class name"):
        explorer.target = "no such class"
    with pytest.raises(ValueError, match="k="):
        explorer.k = 0
    with pytest.raises(ValueError, match="enabled ranks \\[9\\]"):
        explorer.enabled = (1, 9)
    with pytest.raises(ValueError, match="rank_grad='sideways'"):
        explorer.rank_grad = "sideways"
    assert (explorer.target, explorer.k, explorer.layer, explorer.enabled) == before


def test_error_in_a_callback_is_shown_and_the_widget_keeps_working(explorer, monkeypatch):
    good_layer = explorer.layer
    # an expensive callback that fails: a layer the model does not have
    explorer.layer_dropdown.options = list(explorer.layer_dropdown.options) + ["_blocks.99"]
    explorer.layer_dropdown.value = "_blocks.99"
    assert explorer.wait(60)
    assert explorer.error.layout.display == "block"
    assert "_blocks.99" in explorer.error.value and "Error" in explorer.error.value
    assert explorer.layer == good_layer and explorer.layer_dropdown.value == good_layer
    assert explorer.progress.layout.visibility == "hidden"

    # a cheap callback that fails once
    real = widgets.recombine
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom in recombine")
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets, "recombine", flaky)
    explorer._cards[0]["check"].value = False
    assert "boom in recombine" in explorer.error.value
    assert explorer.enabled == (1, 2, 3, 4, 5)  # state unchanged
    assert explorer._cards[0]["check"].value is True  # control put back
    # and it keeps working: the next toggle applies and clears the error
    explorer._cards[0]["check"].value = False
    assert explorer.enabled == (2, 3, 4, 5)
    assert explorer.error.layout.display == "none"
    explorer.enabled = (1, 2, 3, 4, 5)


def test_burst_of_slider_events_ends_in_the_last_state_without_stacked_work(explorer):
    calls = explorer.stats["explain_calls"]
    for value in (4, 6, 8, 7, 9, 11, 10, 6):  # a k slider being dragged
        explorer.k_slider.value = value
    assert explorer.wait(120)
    assert explorer.k == 6 and explorer.k_slider.value == 6
    assert len(explorer.cards_box.children) == 1 + 6
    # at most one computation in flight plus one for the final state, not one per event
    assert explorer.stats["explain_calls"] - calls <= 2
    explorer.k = 5


def test_export_html_and_json(explorer, tmp_path):
    explorer.enabled = (1, 2)
    files = explorer.export(tmp_path / "state", png=False)
    assert [f.name for f in files] == ["state.html", "state.json"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["enabled"] == [1, 2] and state["explanation"]["box"] == list(
        explorer.explanation.box
    )
    assert "<!DOCTYPE html>" in (tmp_path / "state.html").read_text(encoding="utf-8")
    explorer.enabled = (1, 2, 3, 4, 5)


def test_explorer_rejects_non_fastloc_methods(bundle, photo):
    with pytest.raises(ValueError, match="MethodComparison"):
        NeuronExplorer(bundle, photo, method="gradcam")


def test_method_comparison(bundle, photo, counter):
    gt = (40, 20, 200, 220)
    mc = MethodComparison(bundle, photo, methods=("fastloc", "gradcam"), gt_box=gt, debounce=0.05)
    assert list(mc.explanations) == ["fastloc", "gradcam"]
    ious = mc.ious()
    assert set(ious) == {"fastloc", "gradcam"} and all(0 <= v <= 1 for v in ious.values())
    heat = [t for t in mc.grid_fig.data if t.type == "heatmap"]
    assert len(heat) == 2 and all(t.coloraxis == "coloraxis" for t in heat)
    assert "IoU" in mc.table.value and "Grad-CAM" in mc.table.value
    # the shared threshold re-boxes every method from its map: no model call
    counter.backward = counter.forward = 0
    boxes = {m: e.box for m, e in mc.explanations.items()}
    mc.threshold_slider.value = 0.8
    assert counter.backward == 0 and counter.forward == 0
    assert mc.threshold == pytest.approx(0.8)
    assert any(mc.explanations[m].box != boxes[m] for m in boxes)
    # the shared class recomputes every method
    other = next(p for p in mc.explanations["fastloc"].top5 if p.index != mc.target)
    mc.target = other.name
    assert all(e.target == other.index for e in mc.explanations.values())
    with pytest.raises(ValueError, match="'nope'"):
        MethodComparison(bundle, photo, methods=("nope",))


def test_first_toggle_is_immediate_and_close_ends_the_worker(bundle, photo):
    e = fv.explain(bundle, photo, k=3)
    ex = NeuronExplorer(bundle, photo, explanation=e, debounce=5.0)
    assert ex.stats["explain_calls"] == 0  # started from e
    ex._cards[1]["check"].value = False  # no debounce wait: applied in the handler
    assert ex.enabled == (1, 3)
    thread = ex._debouncer._thread
    ex.close()
    thread.join(5)
    assert not thread.is_alive()


def test_png_export_when_kaleido_finds_a_chromium(explorer, tmp_path):
    require("kaleido")
    import shutil

    if not (shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chrome")):
        pytest.skip("no Chrome/Chromium for kaleido")
    files = explorer.export(tmp_path / "shot", png=True)
    png = tmp_path / "shot.png"
    assert png in files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_moves_during_a_long_computation(bundle, photo, monkeypatch):
    ex = NeuronExplorer(bundle, photo, k=2, debounce=0.01)
    seen = []
    real = widgets.explain

    def slow(*args, **kwargs):
        time.sleep(0.7)  # a long computation: the ticker must move meanwhile
        seen.append((ex.progress.layout.visibility, ex.progress.value, ex.progress.description))
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets, "explain", slow)
    ex.k_slider.value = 3
    assert ex.wait(120)
    visibility, value, text = seen[0]
    assert visibility == "visible" and 0.1 < value < 0.9 and text.startswith("explaining")
    assert ex.progress.layout.visibility == "hidden" and ex.k == 3
    ex.close()


def test_method_comparison_error_is_shown_and_it_keeps_working(bundle, photo, monkeypatch):
    mc = MethodComparison(bundle, photo, methods=("gradcam",), debounce=0.01)
    first = mc.target
    real = widgets.explain

    def failing(*args, **kwargs):
        raise RuntimeError("boom in explain")

    monkeypatch.setattr(widgets, "explain", failing)
    mc.class_box.value = next(o for o in mc.class_box.options if o.endswith("(1)"))
    assert mc.wait(60)
    assert "boom in explain" in mc.error.value and mc.error.layout.display == "block"
    assert mc.target == first and mc.class_box.value.endswith(f"({first})")
    monkeypatch.setattr(widgets, "explain", real)
    mc.threshold_slider.value = 0.6  # keeps working, and the error goes away
    assert mc.threshold == pytest.approx(0.6) and mc.error.layout.display == "none"
    mc.class_box.value = next(o for o in mc.class_box.options if o.endswith("(1)"))
    assert mc.wait(60)
    assert mc.target == 1
    mc.close()


def test_a_batch_of_images_is_refused(bundle, photo):
    with pytest.raises(ValueError, match="one image"):
        NeuronExplorer(bundle, [photo, photo])


def test_the_threshold_follows_the_combine_rule_until_the_user_sets_it(explorer, counter):
    """Each rule's map has its own default threshold (issue 20): switching the rule moves a
    threshold left at its default to the new rule's; a threshold the user chose stays."""
    explorer.method = "fastloc"
    explorer.combine_dropdown.value = "sum"
    assert explorer.threshold == explorer.threshold_slider.value == fv.RULES["sum"].threshold
    explorer.combine_dropdown.value = "gate_cam"
    assert explorer.threshold == explorer.threshold_slider.value == fv.RULES["gate_cam"].threshold
    explorer.threshold_slider.value = 0.37
    explorer.combine_dropdown.value = "max"
    assert explorer.threshold == explorer.threshold_slider.value == 0.37
    assert explorer.explanation.params["combine"] == "max" and counter.backward == 0


def test_class_map_card_toggles_sum_cam_without_any_pass(explorer, counter):
    explorer.method = "fastloc"
    explorer.combine_dropdown.value = "refine_cam"
    counter.forward = counter.backward = 0
    e = explorer.explanation
    base, enabled = explorer.base_explanation, list(explorer.enabled)
    assert e.params["combine"] == "refine_cam" and e.class_map is not None
    assert explorer.cards_box.children[0] is explorer.class_card["box"]
    assert "Grad-CAM" in explorer.class_card["text"].value
    check = explorer.class_card["check"]
    assert check.value is True
    check.value = False
    assert explorer.explanation.params["combine"] == "sum" == explorer.combine_dropdown.value
    np.testing.assert_allclose(explorer.explanation.saliency, fv.recombine(base, enabled, combine="sum").saliency)
    check.value = True  # back to the rule it had
    assert explorer.combine_dropdown.value == "refine_cam"
    np.testing.assert_allclose(explorer.explanation.saliency, e.saliency)
    explorer.combine_dropdown.value = "sum_cam"
    assert check.value is True and "'sum_cam'" in explorer.class_card["text"].value
    assert counter.backward == 0 and counter.forward == 0


def test_switching_back_from_rescored_drops_the_second_trace_and_axis(explorer):
    # issue 9, bug 1: the rank-score chart kept the "rescored logit" trace and its
    # right-hand axis after going back to fastloc, through later k changes too
    explorer.method = "fastloc_rescored"
    assert "yaxis2" in explorer.bars_fig.to_dict()["layout"]
    explorer.method = "fastloc"
    for _ in range(2):
        fig = explorer.bars_fig.to_dict()
        assert "yaxis2" not in fig["layout"]
        visible = [t for t in fig["data"] if t.get("visible", True) is not False]
        assert [t.get("name") for t in visible] == ["rank score"]
        assert all(t.get("yaxis", "y") == "y" for t in fig["data"])
        explorer.k = 4  # a later heavy change keeps it that way
    explorer.k = 5


def test_class_box_accepts_what_people_type(explorer, bundle):
    # issue 9, bug 2: only the exact label (with its "★ ") used to act; anything else left
    # the old map on screen under the new text, with no message
    names = bundle.class_names
    top5 = explorer.explanation.top5
    starless = next(f"{p.name} ({p.index})" for p in top5[1:])  # a top-5 label, no star
    typed = [
        ("tabby", 281),
        ("281", 281),
        ("space shuttle", names.index("space shuttle")),
        ("SPACE SHUTTLE (812)", 812),
        (starless, int(starless.rsplit("(", 1)[1][:-1])),
    ]
    for text, index in typed:
        explorer.target = 1  # start elsewhere, so each text must move the explorer
        explorer.class_box.value = text
        assert explorer.wait(120)
        assert explorer.target == index == explorer.explanation.target, text
        assert explorer.class_box.value.endswith(f"({index})"), text
        assert explorer.error.layout.display == "none"
    shown, target = explorer.explanation, explorer.target
    explorer.class_box.value = "cat"  # several classes: offered, nothing changes
    assert explorer.wait(60)
    message = explorer.class_message.value
    for cat in ("tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"):
        assert cat in message and any(cat in o for o in explorer.class_box.options)
    assert "crate" not in message and "oxcart" not in message
    assert len(explorer.class_box.options) < 20
    assert explorer.target == target and explorer.explanation is shown
    explorer.class_box.value = "zzzz"  # nothing: a message, nothing changes
    assert explorer.wait(60)
    assert "zzzz" in explorer.class_message.value
    assert explorer.class_message.layout.display != "none"
    assert explorer.target == target and explorer.explanation is shown
    assert len(explorer.class_box.options) == len(names)
    explorer.class_box.value = f"{names[target]} ({target})"  # a good one clears the message
    assert explorer.wait(60)
    assert explorer.class_message.layout.display == "none" and explorer.target == target


# --- one pass at a time on a model (issue 19) ------------------------------------------------

RACE_CLASSES = (281, 282, 285)  # chelsea's top classes


def _same(a, b) -> None:
    assert [(n.channel, n.y, n.x) for n in a.neurons] == [(n.channel, n.y, n.x) for n in b.neurons]
    np.testing.assert_allclose(a.saliency, b.saliency, rtol=1e-5, atol=1e-6)
    assert a.box == b.box and a.probability == pytest.approx(b.probability, rel=1e-5)


def test_explorers_and_direct_calls_on_one_model_take_turns(bundle, photo):
    """The race of issue 19: explorers changing class (explain, then fv.ablate on their
    workers) while this thread calls explain and ablate on the same bundle. Before the
    model's lock: "mat1 and mat2 shapes cannot be multiplied", "runs 2 times per forward
    pass". Now: no error anywhere, and every result equals the single-threaded one."""
    ref = {c: fv.explain(bundle, photo, k=1, target=c) for c in RACE_CLASSES}
    ref_drops = {c: [o.probability for o in fv.ablate(bundle, e).channel_off] for c, e in ref.items()}
    explorers = [NeuronExplorer(bundle, photo, explanation=ref[c], debounce=0.0) for c in RACE_CLASSES]
    errors = []
    try:
        for i, ex in enumerate(explorers):  # each starts its ablation, then a new class
            c = RACE_CLASSES[(i + 1) % len(RACE_CLASSES)]
            ex.class_box.value = f"{bundle.class_names[c]} ({c})"
        for c in RACE_CLASSES:
            try:
                e = fv.explain(bundle, photo, k=1, target=c)
                _same(e, ref[c])
                assert [o.probability for o in fv.ablate(bundle, e).channel_off] == pytest.approx(ref_drops[c], rel=1e-5)
            except Exception as err:  # noqa: BLE001 - counted below
                errors.append(repr(err))
        for i, ex in enumerate(explorers):
            assert ex.wait(600)
            c = RACE_CLASSES[(i + 1) % len(RACE_CLASSES)]
            assert ex.stats["errors"] == 0 and ex.error.layout.display == "none", ex.error.value
            _same(ex.base_explanation, ref[c])
            assert [o.probability for o in ex.ablation.channel_off] == pytest.approx(ref_drops[c], rel=1e-5)
    finally:
        for ex in explorers:
            ex.close()
    assert errors == []


def test_closing_an_explorer_cancels_its_work_waiting_for_the_model(bundle, photo):
    from fastloc_viz.model.state import one_pass

    e = fv.explain(bundle, photo, k=2)
    with one_pass(bundle.model):  # another pass in flight on the model
        ex = NeuronExplorer(bundle, photo, explanation=e, debounce=0.0)  # this thread: re-entrant
        calls = []
        h = bundle.model.register_forward_pre_hook(lambda *_: calls.append(1))
        thread = ex._debouncer._thread
        thread.join(0.3)
        assert thread.is_alive() and not ex.wait(0)  # its drops wait their turn
        ex.close()
        thread.join(5)
        assert not thread.is_alive()  # cancelled while waiting, not after the pass
    h.remove()
    assert calls == [] and ex.ablation is None and ex.stats["errors"] == 0


def test_a_script_that_leaves_widgets_alive_exits_0(tmp_path):
    """Issue 19: a script ending with an explorer's ablation in flight aborted
    ("terminate called without an active exception", status 134)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "leave_alive.py"
    script.write_text(
        "import torch\n"
        "import fastloc_viz as fv\n"
        "from fastloc_viz.widgets import MethodComparison, NeuronExplorer\n"
        "torch.set_num_threads(1)\n"
        "b = fv.load_model('efficientnet_lite0')\n"
        "img = fv.sample_image('chelsea')\n"
        "ex = NeuronExplorer(b, img, k=1, debounce=0.0)\n"
        "ex.target = 282\n"  # its drops start on the worker: the script ends meanwhile
        "mc = MethodComparison(b, img, methods=('gradcam',), faithfulness_steps=4)\n"
        "mc.checks.start('faithfulness')\n"
        "print('end of script', flush=True)\n"
    )
    root = Path(fv.__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert "end of script" in run.stdout
    assert run.returncode == 0, run.stderr[-2000:]
    assert "terminate called" not in run.stderr


# --- a method registered here gets a correct explorer (issue 19: the registry's kinds) -------


@pytest.fixture
def gamma_method():
    """FastLoc whose map is raised to ``gamma``, a setting of its own that only recombines."""
    from dataclasses import dataclass

    from fastloc_viz.methods.fastloc import FastLoc

    class GammaFastLoc(FastLoc):
        name = "gamma_fastloc_test"
        label = "FastLoc, gamma"
        recombinable = (*FastLoc.recombinable, "gamma")

        @dataclass(frozen=True)
        class Params(FastLoc.Params):
            gamma: float = 1.0

        def combined_map(self, neuron_maps, scores, class_map, params):
            return super().combined_map(neuron_maps, scores, class_map, params) ** params.gamma

    fv.register_method(GammaFastLoc)
    yield GammaFastLoc.name
    fv.unregister_method(GammaFastLoc.name)


def test_a_method_registered_in_a_test_file_gets_a_correct_explorer(gamma_method, monkeypatch):
    from conftest import TinyNet

    bundle = fv.load_model(TinyNet("relu").eval(), input_size=32, layer="conv3", class_names=list("abcd"))
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    ex = NeuronExplorer(bundle, img, method=gamma_method, k=3, debounce=0.0)
    try:
        assert ("FastLoc, gamma", gamma_method) in ex.method_buttons.options
        assert ex.wait(60) and ex.settings["gamma"] == 1.0
        counter = PassCounter(monkeypatch, bundle.model)
        ex.set(gamma=2.0)  # its own recombinable setting: no pass
        assert counter.forward == counter.backward == 0 and ex.stats["explain_calls"] == 1
        shown, box = ex.explanation.saliency, ex.explanation.box
        ex.set(k=2)  # a setting that needs a pass: one explain call
        assert counter.backward > 0 and ex.stats["explain_calls"] == 2
        assert ex.settings["gamma"] == 2.0 and len(ex.explanation.neurons) == 2
        assert ex.wait(60)
        counter.close()
        want = fv.explain(bundle, img, method=gamma_method, k=3, gamma=2.0)
        np.testing.assert_allclose(shown, want.saliency, rtol=1e-6, atol=1e-7)
        assert box == want.box
        assert not np.allclose(shown, fv.explain(bundle, img, method=gamma_method, k=3).saliency)
        assert ex.k_slider.disabled is False  # it has k; the controls follow its parameters
    finally:
        ex.close()
