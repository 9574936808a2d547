"""The registries (methods, combine rules), the class lookup, and docs/own-method.md run as written."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TinyNet
from scipy import ndimage

import fastloc_viz as fv
from fastloc_viz import cli
from fastloc_viz.core.maps import map_to_box, normalize
from fastloc_viz.methods import combine, default_of
from fastloc_viz.model.bundle import imagenet_classes
from fastloc_viz.model.classes import AmbiguousClass, UnknownClass, class_index

# --- combine rules against longhand references --------------------------------------------


def _tiny():
    return fv.load_model(TinyNet(), class_names=["a", "b", "c", "d"], input_size=(8, 8), layer="a3")


def _norm(m):
    m = np.clip(m.astype(np.float64), 0, None)
    return m / m.max() if m.max() > 0 else m


def _blur(m, s):
    return ndimage.gaussian_filter(m.astype(np.float32), sigma=s, mode="constant") if s > 0 else m


def _longhand(rule, maps, scores, sigma, cam):
    """Each rule written out on its own, pixel by pixel where that is the definition."""
    k, h, w = maps.shape
    if rule == "sum":
        return _norm(_blur(sum(maps[i] for i in range(k)) / k, sigma))
    if rule == "max":
        out = np.zeros((h, w), np.float32)
        for y in range(h):
            for x in range(w):
                out[y, x] = max(maps[i, y, x] for i in range(k))
        return _norm(_blur(out, sigma))
    if rule == "weighted":
        wts = [max(float(s), 0.0) for s in scores]
        total = sum(wts)
        wts = [v / total for v in wts] if total > 0 else [1.0 / k] * k
        return _norm(_blur(sum(wts[i] * maps[i] for i in range(k)), sigma))
    if rule == "union":
        out = np.zeros((h, w), bool)
        for m in maps:
            pos = m[m > 0]
            blob = m > np.percentile(pos, 80.0)
            blob = ndimage.binary_closing(blob, np.ones((3, 3), bool), iterations=3, border_value=0)
            out |= blob
        return out.astype(np.float32)
    c = _norm(cam)
    if rule == "within_cam":  # the neurons inside the class map's peak region, capped at their level at its peak
        labels, _ = ndimage.label(c >= combine.WITHIN_REGION, np.ones((3, 3)))  # 8-connected, as the boxes
        py, px = divmod(int(np.argmax(c)), w)
        region = labels == labels[py, px]
        grow = round(combine.WITHIN_GROW * min(h, w) / 224)
        for _ in range(grow):  # one pixel further in the four directions, each step
            region = region | np.pad(region, ((1, 0), (0, 0)))[:-1] | np.pad(region, ((0, 1), (0, 0)))[1:] \
                | np.pad(region, ((0, 0), (1, 0)))[:, :-1] | np.pad(region, ((0, 0), (0, 1)))[:, 1:]
        g = _blur(sum(maps[i] for i in range(k)) / k, sigma) * region * c**combine.WITHIN_POWER
        out = np.zeros((h, w), np.float64)
        for y in range(h):
            for x in range(w):
                out[y, x] = (min(g[y, x] / g[py, px], 1.0) + combine.WITHIN_TIE * c[y, x]) / (1 + combine.WITHIN_TIE)
        return out
    if rule == "refine_cam":  # cam + 0.9 (1 - cam) G, G = the neurons weighted by cam squared
        g = _norm(_blur(sum(maps[i] * c * c for i in range(k)) / k, sigma))
        out = np.zeros((h, w), np.float64)
        for y in range(h):
            for x in range(w):
                out[y, x] = c[y, x] + 0.9 * (1 - c[y, x]) * g[y, x]
        return out
    gated = [maps[i] * c if rule == "gate_cam" else maps[i] for i in range(k)]
    return _norm(_norm(_blur(sum(gated) / k, sigma)) + c)


BUILT_IN_RULES = ("refine_cam", "gate_cam", "sum_cam", "sum", "max", "weighted", "union", "within_cam")


def test_the_built_in_rules_are_registered_in_order():
    assert tuple(fv.RULES)[: len(BUILT_IN_RULES)] == BUILT_IN_RULES
    assert combine.cam_rules() == ("refine_cam", "gate_cam", "sum_cam", "within_cam")


def test_refine_cam_keeps_the_class_maps_peak_and_mask():
    """The default rule never moves the peak off the class map's and never drops a pixel the
    class map's own threshold keeps: the neurons only add extent."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        maps = rng.random((5, 16, 16)).astype(np.float32) ** 4
        cam = ndimage.gaussian_filter(rng.random((16, 16)), 3).astype(np.float32)
        out = combine.combine_maps(maps, rule="refine_cam", sigma=1.0, class_map=cam)
        c = _norm(cam)
        assert np.argmax(out) == np.argmax(c) and out.max() == 1.0
        assert (out >= c - 1e-6).all()
        for t in (0.2, 0.5, 0.8):
            assert (out >= t)[c >= t].all()


def test_each_rule_has_its_own_threshold_and_recombine_follows_it():
    e = fv.explain(_tiny(), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), k=2)
    assert e.params["threshold"] == fv.RULES[e.params["combine"]].threshold == default_of("fastloc", "threshold")
    assert len({r.threshold for r in fv.RULES.values()}) > 3  # chosen per rule, not one number
    to_sum = fv.recombine(e, combine="sum")
    assert to_sum.params["threshold"] == fv.RULES["sum"].threshold != e.params["threshold"]
    assert fv.recombine(to_sum, combine="max").params["threshold"] == fv.RULES["max"].threshold
    mine = fv.recombine(e, threshold=0.37)
    assert fv.recombine(mine, combine="sum").params["threshold"] == 0.37  # the user's stays
    assert fv.recombine(e, combine="sum", threshold=0.2).params["threshold"] == 0.2
    assert fv.explain(_tiny(), torch.rand(3, 8, 8), k=2, combine="max").params["threshold"] == fv.RULES["max"].threshold
    with pytest.raises(ValueError, match="threshold"):
        fv.register_rule("bad_threshold", threshold=1.5)(lambda maps, **_: maps[0])
    assert "bad_threshold" not in fv.RULES


def test_within_cam_points_where_the_class_map_does_and_boxes_what_the_neurons_draw():
    """The class map (two blobs, the stronger on the left) says where; the one neuron map fires
    on a small square inside the left blob and on the right blob: the map's peak is the class
    map's, the right blob is cut away (outside the peak's region), and the box at the rule's
    threshold is the neurons' square, not the class map's larger blob."""
    yy, xx = np.mgrid[0:40, 0:60]
    cam = (np.exp(-((yy - 20) ** 2 + (xx - 15) ** 2) / 150.0) + 0.8 * np.exp(-((yy - 20) ** 2 + (xx - 48) ** 2) / 40.0))
    neuron = np.zeros((1, 40, 60), np.float32)
    neuron[0, 16:26, 12:22] = 1.0  # inside the left blob
    neuron[0, 15:25, 44:54] = 1.0  # the right blob: another object
    out = combine.combine_maps(neuron, rule="within_cam", sigma=1.0, class_map=cam.astype(np.float32))
    assert np.unravel_index(np.argmax(out), out.shape) == np.unravel_index(np.argmax(cam), cam.shape)
    assert out[:, 40:].max() <= combine.WITHIN_TIE  # only the tie-break of the class map there
    box = map_to_box(out, fv.RULES["within_cam"].threshold)
    cam_box = map_to_box(cam, fv.RULES["within_cam"].threshold)
    x0, y0, x1, y1 = box
    assert 10 <= x0 <= 13 and 20 <= x1 <= 24 and 14 <= y0 <= 17 and 25 <= y1 <= 28, box
    assert (cam_box[2] - cam_box[0]) > (x1 - x0) + 4  # the class map's own box is wider


@pytest.mark.parametrize("rule", BUILT_IN_RULES)
@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_each_rule_equals_its_longhand_reference(rule, sigma):
    rng = np.random.default_rng(3)
    maps = rng.random((4, 12, 10)).astype(np.float32) ** 3
    scores = np.array([0.5, -1.0, 2.0, 0.25])
    cam = rng.random((12, 10)).astype(np.float32) * 3
    got = combine.combine_maps(maps, rule=rule, scores=scores, sigma=sigma, class_map=cam)
    want = _longhand(rule, maps, scores, sigma, cam)
    assert got.dtype == np.float32 and got.shape == (12, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rules_on_an_empty_selection_and_bad_input():
    cam = np.eye(6, dtype=np.float32)
    none = np.zeros((0, 6, 6), np.float32)
    assert np.array_equal(combine.combine_maps(none, rule="gate_cam", class_map=cam), cam)
    assert not combine.combine_maps(none, rule="sum").any()
    with pytest.raises(ValueError, match=r"combine='mean' is not one of \['refine_cam'"):
        combine.combine_maps(none, rule="mean")
    with pytest.raises(ValueError, match="needs the probe layer's class map"):
        combine.combine_maps(np.ones((1, 6, 6), np.float32), rule="sum_cam")


def test_a_registered_rule_is_used_by_explain_and_recombine():
    net = _tiny()
    try:
        @fv.register_rule("first_only")
        def first_only(maps, *, sigma, **_):
            """Only the best neuron's map."""
            return normalize(maps[0])

        e = fv.explain(net, torch.rand(3, 8, 8), k=2, combine="first_only")
        assert e.params["combine"] == "first_only"
        np.testing.assert_array_equal(e.saliency, normalize(e.neuron_maps[0]))
        again = fv.recombine(e, [2])
        np.testing.assert_array_equal(again.saliency, normalize(e.neuron_maps[1]))
        with pytest.raises(ValueError, match="already registered"):
            fv.register_rule("sum")(first_only)
    finally:
        combine.unregister_rule("first_only")
    assert "first_only" not in fv.RULES


def test_the_rules_are_a_read_only_view():
    """Writing to ``RULES`` raises; only ``register_rule`` adds a rule, and the view sees it."""
    rule = fv.RULES["sum"]
    with pytest.raises(TypeError):
        fv.RULES["mine"] = rule
    with pytest.raises(TypeError):
        del fv.RULES["sum"]
    fv.register_rule("mine")(lambda maps, **_: maps[0])
    try:
        assert "mine" in fv.RULES and fv.RULES["mine"].doc == "mine"
    finally:
        combine.unregister_rule("mine")
    with pytest.raises(ValueError, match=r"combine='mine' is not one of"):
        combine.unregister_rule("mine")


# --- the method registry -------------------------------------------------------------------


def test_the_built_in_methods_and_their_declarations():
    assert list(fv.METHODS) == [
        "fastloc", "fastloc_rescored", "gradcam", "guided_backprop", "guided_gradcam",
        "gradcam_pp", "xgradcam", "layercam", "scorecam", "eigencam",
        "saliency", "integrated_gradients", "smoothgrad", "occlusion",
    ]
    m = fv.get_method("fastloc_rescored")
    assert (m.label, m.uses_layer, m.has_neurons) == ("FastLoc (rescored)", True, True)
    assert m.defaults() == {
        "sigma": None, "threshold": 0.54, "components": "peak",
        "k": 5, "rank_grad": "plain", "combine": "refine_cam", "passes": "auto", "kmax": None,
    }
    assert fv.get_method("gradcam").defaults()["sigma"] == 0.0
    # each method's own default box threshold, chosen on the development split (results.md)
    assert {n: m.defaults()["threshold"] for n, m in fv.METHODS.items()} == {
        "fastloc": 0.54, "fastloc_rescored": 0.54, "gradcam": 0.44, "guided_backprop": 0.25, "guided_gradcam": 0.23,
        "gradcam_pp": 0.30, "xgradcam": 0.20, "layercam": 0.34, "scorecam": 0.46, "eigencam": 0.05,
        "saliency": 0.26, "integrated_gradients": 0.24, "smoothgrad": 0.33, "occlusion": 0.30,
    }
    assert not fv.get_method("guided_backprop").uses_layer
    with pytest.raises(TypeError):
        fv.METHODS["x"] = None  # a read-only view


def test_which_methods_a_view_shows():
    from fastloc_viz.evaluation.base import parse_methods
    from fastloc_viz.methods import DEFAULT_METHODS, select_methods

    assert select_methods(None) == DEFAULT_METHODS == (
        "fastloc", "fastloc_rescored", "gradcam", "guided_backprop", "guided_gradcam")
    assert select_methods("all") == tuple(fv.METHODS) and len(fv.METHODS) == 14
    assert select_methods("scorecam, gradcam,scorecam") == ("scorecam", "gradcam")
    assert select_methods(["layercam"]) == ("layercam",)
    with pytest.raises(ValueError, match=r"method='layer_cam' is not one of \['fastloc'"):
        select_methods("gradcam,layer_cam")
    with pytest.raises(ValueError, match="names no method"):
        select_methods([])
    assert [s.label for s in parse_methods("all")] == list(fv.METHODS)
    assert [s.label for s in parse_methods("gradcam,occlusion[window=48]")] == ["gradcam", "occlusion[window=48]"]


def test_an_unknown_method_fails_in_one_place_listing_the_registered_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"method='gradcam\+\+' is not one of \['fastloc', 'fastloc_rescored', 'gradcam'"):
        fv.get_method("gradcam++")
    with pytest.raises(ValueError, match=r"method='nope' is not one of"):
        fv.explain(_tiny(), torch.rand(3, 8, 8), method="nope")
    from fastloc_viz.evaluation.base import parse_methods

    with pytest.raises(ValueError, match=r"method='nope' is not one of \['fastloc'"):
        parse_methods("gradcam,nope")
    assert cli.main(["explain", "sample:chelsea", "--method", "nope"]) == 2
    assert "method='nope' is not one of ['fastloc'" in capsys.readouterr().err


def test_parameters_are_checked_against_the_method():
    net = _tiny()
    with pytest.raises(TypeError, match=r"unknown parameter 'n_step' for method 'gradcam'; it takes \['components'"):
        fv.explain(net, torch.rand(3, 8, 8), method="gradcam", n_step=3)
    # another method's parameter is ignored (one set of arguments serves a comparison)
    e = fv.explain(net, torch.rand(3, 8, 8), method="gradcam", k=3, kmax=9)
    assert set(e.params) == {"sigma", "threshold", "components"}


def test_each_method_says_which_settings_need_a_pass():
    fastloc, rescored, gradcam = (fv.get_method(n) for n in ("fastloc", "fastloc_rescored", "gradcam"))
    assert fastloc.pass_settings() == ("k", "rank_grad", "passes")
    assert set(fastloc.recombinable) == {"threshold", "components", "sigma", "combine"}
    assert rescored.pass_settings() == ("k", "rank_grad", "passes", "kmax")
    assert gradcam.pass_settings() == ("sigma",) and set(gradcam.recombinable) == {"threshold", "components"}
    net = _tiny()
    e = fv.explain(net, torch.rand(3, 8, 8), k=2)
    with pytest.raises(ValueError, match="'k' of method 'fastloc' needs a new pass"):
        fv.recombine(e, k=3)
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = fv.explain(net, img, method="gradcam")
    high = fv.explain(net, img, method="gradcam", threshold=0.9)
    assert gradcam.recombine(g, threshold=0.9).box == high.box != g.box  # re-boxed, no pass
    # kmax follows k unless given: twice the neurons kept, at least 10
    kmax = lambda **kw: rescored.candidates(rescored.Params(**kw))  # noqa: E731
    assert (kmax(k=2), kmax(k=6), kmax(k=2, kmax=4)) == (10, 12, 4)
    assert fv.explain(net, img, method="fastloc_rescored", k=2, kmax=3).params["kmax"] == 3


def test_registration_errors_name_the_problem():
    class NoLabel(fv.Method):
        name = "no_label"

    with pytest.raises(ValueError, match="needs a label"):
        fv.register_method(NoLabel)

    class BadName(fv.Method):
        name, label = "bad name", "Bad"

    with pytest.raises(ValueError, match="must be an identifier"):
        fv.register_method(BadName)

    class Clash(fv.Method):
        name, label = "gradcam", "Another Grad-CAM"

    with pytest.raises(ValueError, match="'gradcam' is already registered"):
        fv.register_method(Clash)
    with pytest.raises(TypeError, match="subclass of fastloc_viz.Method"):
        fv.register_method(dict)

    class Stray(fv.Method):
        name, label, recombinable = "stray", "Stray", ("threshold", "gamma")

    with pytest.raises(ValueError, match=r"recombinable names \['gamma'\], not parameters"):
        fv.register_method(Stray)


# --- the class lookup ------------------------------------------------------------------------

NAMES = imagenet_classes()


@pytest.mark.parametrize(
    "text, index",
    [
        ("tabby", 281), ("281", 281), (" 281 ", 281), (281, 281), (np.int64(281), 281),
        ("space shuttle", 812), ("SPACE SHUTTLE", 812), ("space_shuttle", 812),
        ("SPACE SHUTTLE (812)", 812), ("missile (657)", 657), ("★ missile (657)", 657),
        ("Tiger-Cat", 282), ("shutt", 812), ("crate", 519),
    ],
)
def test_what_people_type_resolves(text, index):
    assert class_index(NAMES, text) == index


def test_an_ambiguous_text_lists_the_matching_classes_only():
    with pytest.raises(AmbiguousClass) as err:
        class_index(NAMES, "cat")
    names = [NAMES[i] for i in err.value.candidates]
    assert names == ["tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "Madagascar cat"]
    assert "crate" not in str(err.value) and "oxcart" not in str(err.value)
    assert isinstance(err.value, LookupError)


def test_unknown_text_and_bad_types():
    with pytest.raises(UnknownClass, match=r"'tabby kat' is not a class name.*closest: \['tabby'"):
        class_index(NAMES, "tabby kat")
    with pytest.raises(UnknownClass, match="out of range"):
        class_index(NAMES, "1000")
    with pytest.raises(TypeError, match="class index, a class name or None"):
        class_index(NAMES, 2.5)
    with pytest.raises(UnknownClass, match="empty"):
        class_index(NAMES, "   ")


def test_explain_and_the_cli_use_the_same_lookup():
    bundle = fv.load_model(TinyNet(classes=4), class_names=["tabby", "tiger cat", "Persian cat", "crate"],
                           input_size=(8, 8), layer="a3")
    assert fv.explain(bundle, torch.rand(3, 8, 8), method="gradcam", target="TIGER_CAT").target == 1
    assert fv.explain(bundle, torch.rand(3, 8, 8), method="gradcam", target="crate (3)").target == 3
    with pytest.raises(AmbiguousClass, match="matches 2 classes"):
        fv.explain(bundle, torch.rand(3, 8, 8), method="gradcam", target="cat")
    assert cli._target_arg("281") == 281 and cli._target_arg("tabby") == "tabby"


# --- docs/own-method.md, run as written ------------------------------------------------------


def _doc_blocks(lang: str) -> list[str]:
    text = (REPO / "docs" / "own-method.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.fixture
def own_method(tmp_path):
    """The doc's first code block, saved as the file it tells the user to save."""
    path = tmp_path / "gradient_shap.py"
    path.write_text(_doc_blocks("python")[0])
    spec = importlib.util.spec_from_file_location("gradient_shap", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gradient_shap"] = module
    spec.loader.exec_module(module)
    yield path
    if "gradient_shap" in fv.METHODS:
        fv.unregister_method("gradient_shap")
    sys.modules.pop("gradient_shap", None)


def test_the_doc_example_is_one_short_file():
    block = _doc_blocks("python")[0]
    assert block.count("class ") == 2 and len(block.splitlines()) < 40


def test_the_doc_method_works_in_explain_comparison_and_evaluate(own_method, lite0, shared_data, tmp_path, capsys):
    from fastloc_viz.evaluation.base import MethodSpec
    from fastloc_viz.evaluation.runner import evaluate
    from fastloc_viz.imaging.dataset import LocalizationDataset
    from fastloc_viz.methods import DEFAULT_METHODS, select_methods
    from fastloc_viz.widgets import MethodComparison

    assert "gradient_shap" in fv.METHODS
    assert select_methods(None) == (*DEFAULT_METHODS, "gradient_shap")  # a user's method is shown by default
    cat = fv.sample_image("chelsea")
    e = fv.explain(lite0, cat, method="gradient_shap", n_samples=4)
    assert e.method == "gradient_shap" and e.params["n_samples"] == 4 and e.target == e.top5[0].index
    assert e.saliency.shape == (224, 224) and e.saliency.max() == 1.0
    x0, y0, x1, y1 = e.box
    assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    with pytest.raises(ValueError, match="n_samples=0 must be at least 1"):
        fv.explain(lite0, cat, method="gradient_shap", n_samples=0)

    mc = MethodComparison(lite0, cat, methods=("gradcam", "gradient_shap"), n_samples=4, debounce=0.01)
    try:
        assert list(mc.explanations) == ["gradcam", "gradient_shap"]
        assert "Gradient SHAP" in str(mc.grid_fig.to_dict()["layout"])
    finally:
        mc.close()

    r = evaluate(lite0, LocalizationDataset(shared_data, limit=2), [MethodSpec("gradient_shap", {"n_samples": 2})])
    assert r["n"] == 2 and 0 <= r["methods"]["gradient_shap[n_samples=2]"]["maxboxacc_50"] <= 1

    fv.unregister_method("gradient_shap")  # the CLI loads it again from the file
    sys.modules.pop("gradient_shap", None)
    code = cli.main(["evaluate", str(shared_data), "--limit", "1", "--no-cache", "--no-progress", "--json",
                     "--plugin", str(own_method), "--methods", "gradient_shap[n_samples=2]"])
    assert code == 0, capsys.readouterr().err
    assert '"gradient_shap[n_samples=2]"' in capsys.readouterr().out
