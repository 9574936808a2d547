"""A box that says how sure it is, and how much of it each neuron drew (issue 20, items 3 and 4).

Exact numbers on hand-made maps for the score, the kinds and the neurons' shares; the score
carried into explain, COCO, CSV, BoxReview's order and card, and the explorer's caption and cards.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image

import fastloc_viz as fv
from fastloc_viz.collection import coco
from fastloc_viz.collection.boxes import boxes
from fastloc_viz.collection.review_store import ReviewStore
from fastloc_viz.core import maps as M
from fastloc_viz.core.results import Explanation, Neuron, Prediction
from fastloc_viz.methods.base import Method, MethodParams, register_method, unregister_method
from fastloc_viz.methods.combine import RULES, combine_maps, combine_parts, neuron_shares, recombine

# 10 x 10: a bright 2 x 2 square (mass 4) and a dim speck (mass 0.5) far from it
SQUARE = np.zeros((10, 10), np.float32)
SQUARE[2:4, 2:4] = 1.0
SQUARE[8, 8] = 0.5


def test_the_score_is_the_share_of_the_maps_mass_inside_the_box():
    assert M.box_score(SQUARE, (2, 2, 4, 4)) == round(4 / 4.5, 6) == 0.888889
    assert M.box_score(SQUARE, (2, 2, 9, 9)) == 1.0
    assert M.box_score(SQUARE, (8, 8, 9, 9)) == round(0.5 / 4.5, 6)
    assert M.box_score(SQUARE, (0, 0, 2, 2)) == 0.0  # nothing of the map inside
    assert M.box_score(np.zeros((4, 4)), (0, 0, 2, 2)) == 0.0  # an all-zero map
    assert M.box_score(SQUARE, None) is None and M.box_kind(SQUARE, None) is None
    negative = SQUARE - 0.25  # clipped at 0 first: the negative background weighs nothing
    assert M.box_score(negative, (2, 2, 4, 4)) == round(3 / 3.25, 6)


def test_whole_image_and_diffuse_boxes_are_marked():
    assert M.box_kind(SQUARE, (2, 2, 4, 4)) == "object"
    # whole: at least 90 % of the image's area, whatever the map
    assert M.box_kind(SQUARE, (0, 0, 10, 10)) == "whole" and M.box_score(SQUARE, (0, 0, 10, 10)) == 1.0
    assert M.box_kind(SQUARE, (0, 0, 10, 9)) == "whole"  # 90 %
    assert M.box_kind(SQUARE, (0, 0, 10, 8)) != "whole"  # 80 %
    # diffuse: outside, the map's mean is at least half its mean inside
    flat = np.full((10, 10), 0.6, np.float32)
    flat[0, 0] = 1.0
    assert M.box_kind(flat, (0, 0, 1, 1)) == "diffuse"  # 0.6 outside >= 0.5 * 1.0 inside
    assert M.box_score(flat, (0, 0, 1, 1)) == round(1 / (1 + 0.6 * 99), 6)
    assert M.box_kind(flat * 0.8, (0, 0, 1, 1)) == "diffuse"  # the rule is relative: 0.48 >= 0.5 * 0.8
    low = np.full((10, 10), 0.49, np.float32)
    low[0, 0] = 1.0
    assert M.box_kind(low, (0, 0, 1, 1)) == "object"  # 0.49 < 0.5
    assert M.box_kind(np.zeros((10, 10)), (0, 0, 2, 2)) == "diffuse"  # an all-zero map singles nothing out


def test_box_fields_and_to_dict_carry_the_score_and_kind():
    f = M.box_fields(SQUARE, 0.5, "peak")
    assert f["box"] == (2, 2, 4, 4) and f["box_score"] == 0.888889 and f["box_kind"] == "object"
    with pytest.warns(UserWarning, match="all zero"):
        none = M.box_fields(np.zeros((4, 4)), 0.5, "peak")
    assert none["box"] is None and none["box_score"] is None and none["box_kind"] is None


@pytest.fixture
def tiny_bundle():
    return fv.load_model(TinyNet(), class_names=["a", "b", "c", "d"], input_size=(10, 10), layer="a3")


@pytest.fixture
def square_method():
    @register_method
    class Square(Method):
        name = "square_map_for_box_score_tests"
        label = "Square map"

        @dataclass(frozen=True)
        class Params(MethodParams):
            sigma: float | None = 0.0

        def attribute(self, ctx, x, targets, params):
            return torch.from_numpy(np.repeat(SQUARE[None], len(x), axis=0))

    yield Square
    unregister_method(Square.name)


def test_explain_gives_every_box_its_score_and_kind(square_method, tiny_bundle):
    image = np.random.default_rng(0).random((10, 10, 3)).astype(np.float32)
    e = fv.explain(tiny_bundle, image, method=square_method.name, target=1, threshold=0.5)
    assert e.box == (2, 2, 4, 4) and e.box_score == 0.888889 and e.box_kind == "object"
    d = json.loads(e.to_json())
    assert d["box_score"] == 0.888889 and d["box_kind"] == "object"
    whole = fv.explain(tiny_bundle, image, method=square_method.name, target=1, threshold=0.0)
    assert whole.box == (0, 0, 10, 10) and whole.box_kind == "whole" and whole.box_score == 1.0


# ------------------------------------------------------------------ the neurons' shares
def _explanation(maps, cam, combine, threshold=0.3):
    k = len(maps)
    neurons = tuple(Neuron(rank=i + 1, channel=i, y=0, x=0, score=float(k - i), activation=1.0, gradient=1.0)
                    for i in range(k))
    sal = combine_maps(maps, rule=combine, scores=[n.score for n in neurons], sigma=0.0, class_map=cam)
    h, w = sal.shape
    return Explanation(
        method="fastloc", target=0, target_name="a", top5=(Prediction(0, "a", 1.0),), layer="a3", saliency=sal,
        image=np.zeros((h, w, 3), np.float32), time_s=0.0,
        params={"combine": combine, "threshold": threshold, "components": "peak", "sigma": 0.0},
        neurons=neurons, neuron_maps=maps, class_map=cam, **M.box_fields(sal, threshold, "peak"))


def _two_neurons():
    maps = np.zeros((2, 6, 6), np.float32)
    maps[0, 2, 2] = 1.0  # neuron 1: one pixel
    maps[1, 2, 3] = maps[1, 3, 3] = 1.0  # neuron 2: two pixels beside it
    return maps


def test_each_neurons_share_of_the_box_on_hand_made_maps():
    e = _explanation(_two_neurons(), None, "sum")
    assert e.box == (2, 2, 4, 4)
    s = neuron_shares(e)
    assert s["class_map"] == 0.0 and s["neurons"] == pytest.approx({1: 1 / 3, 2: 2 / 3}, abs=1e-6)
    # a neuron left out draws nothing, the other draws the whole box
    off = recombine(e, [2])
    assert neuron_shares(off)["neurons"] == pytest.approx({1: 0.0, 2: 1.0}, abs=1e-6)
    assert off.box == (3, 2, 4, 4) and off.box_score == 1.0  # recombine re-scores the new box


def test_refine_cam_shares_the_box_between_the_class_map_and_the_neurons():
    cam = np.zeros((6, 6), np.float32)
    cam[2, 2] = 1.0
    cam[2, 3] = cam[3, 3] = 0.5
    e = _explanation(_two_neurons(), cam, "refine_cam")
    # map = cam + 0.9 (1 - cam) G, G = (maps * cam^2).mean scaled to max 1 = 1, .25, .25:
    # neuron 1 sits on the class map's peak, where refine_cam lifts nothing; neuron 2 adds
    # 0.9 * 0.5 * 0.25 at two pixels; the class map brings 1 + 0.5 + 0.5 to the box
    assert e.box == (2, 2, 4, 4)
    s = neuron_shares(e)
    assert s["class_map"] == pytest.approx(2 / 2.225, abs=1e-6)
    assert s["neurons"] == pytest.approx({1: 0.0, 2: 0.225 / 2.225}, abs=1e-6)


def test_every_rules_parts_add_up_to_its_map_and_box():
    from viz_fixtures import neuron_maps

    maps = neuron_maps(4, seed=1, size=48)
    cam = M.normalize(np.random.default_rng(2).random((48, 48)).astype(np.float32))
    box = (5, 9, 30, 40)
    for name, rule in RULES.items():
        kw = dict(rule=name, scores=[3.0, 2.0, 1.0, -1.0], sigma=4.0, class_map=cam)
        parts = combine_parts(maps, **kw)
        assert parts is not None, name
        full = combine_maps(maps, **kw)
        each = parts.maps()
        np.testing.assert_allclose(parts.base + each.sum(axis=0), full, atol=1e-5, err_msg=name)
        expected = each[:, 9:40, 5:30].sum(axis=(1, 2))
        for mass in (None, float(full[9:40, 5:30].sum())):  # given the map's own mass, no normalization pass
            base, drawn = parts.box_masses(box, mass)
            np.testing.assert_allclose(drawn, expected, rtol=1e-4, atol=1e-4, err_msg=f"{name} {mass}")
            assert base == pytest.approx(float(parts.base[9:40, 5:30].sum()), rel=1e-5)


# ------------------------------------------------------------------ COCO, CSV, BoxReview
def _rows():
    return [
        {"key": "a.jpg", "index": 0, "file": "a.jpg", "status": "ok", "width": 60, "height": 40, "target": 1,
         "target_name": "dog", "given": False, "probability": 0.9, "box": [0, 0, 10, 10], "box_original": [0, 0, 60, 40],
         "score": 1.0, "kind": "whole"},
        {"key": "b.jpg", "index": 1, "file": "b.jpg", "status": "ok", "width": 60, "height": 40, "target": 0,
         "target_name": "cat", "given": False, "probability": 0.95, "box": [1, 1, 3, 3], "box_original": [6, 4, 18, 12],
         "score": 0.7, "kind": "object",
         "boxes": [{"box": [1, 1, 3, 3], "box_original": [6, 4, 18, 12], "score": 1.0, "box_score": 0.7, "kind": "object"},
                   {"box": [7, 7, 8, 8], "box_original": [42, 28, 48, 32], "score": 0.6, "box_score": 0.1,
                    "kind": "diffuse"}]},
        {"key": "c.jpg", "index": 2, "file": "c.jpg", "status": "ok", "width": 60, "height": 40, "target": 1,
         "target_name": "dog", "given": False, "probability": 0.6, "box": [2, 2, 5, 5], "box_original": [12, 8, 30, 20],
         "score": 0.85, "kind": "object"},
    ]


def test_coco_and_csv_carry_the_box_score_and_kind():
    doc = coco.coco_document(_rows(), ["cat", "dog"])
    got = [(a["image_id"], a["score"], a["probability"], a["kind"]) for a in doc["annotations"]]
    assert got == [(1, 1.0, 0.9, "whole"), (2, 0.7, 0.95, "object"), (2, 0.1, 0.95, "diffuse"), (3, 0.85, 0.6, "object")]
    table = list(csv.DictReader(io.StringIO(coco.csv_text(_rows()))))
    assert [(r["file"], r["score"], r["kind"], r["probability"]) for r in table] == [
        ("a.jpg", "1", "whole", "0.9"), ("b.jpg", "0.7", "object", "0.95"), ("c.jpg", "0.85", "object", "0.6")]


def test_boxreview_sorts_by_the_box_score_and_marks_whole_boxes(tmp_path):
    from fastloc_viz.widgets import BoxReview

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (60, 40)).save(tmp_path / name)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco.coco_document(_rows(), ["cat", "dog"], {"source": str(tmp_path)})))
    store = ReviewStore(path)
    # by the box's score (1.0, 0.85, 0.7), not by the probability (0.9, 0.6, 0.95: b first)
    assert [p.file for p in store.proposals()] == ["a.jpg", "c.jpg", "b.jpg"]
    assert [(p.score, p.kind, p.probability) for p in store.proposals(sort="score")] == [
        (0.7, "object", 0.95), (0.85, "object", 0.6), (1.0, "whole", 0.9)]
    review = BoxReview(path)
    labels = [c.children[1].value for c in review.cards]
    assert "whole image" in labels[0] and "1.00" in labels[0]
    assert "whole image" not in labels[1] and "0.85" in labels[1]


def test_a_collection_run_scores_each_box_as_explain_does(tmp_path):
    torch.manual_seed(0)
    bundle = fv.load_model(TinyNet(), class_names=["a", "b", "c", "d"], input_size=(16, 16), layer="a3")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 20 + 8 * i, 3), dtype=np.uint8)).save(src / f"p{i}.png")
    out = tmp_path / "boxes.json"
    summary = boxes(bundle, src, out, method="gradcam", batch_size=2, workers=0, progress=False)
    doc = json.loads(out.read_text())
    table = {r["file"]: r for r in csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text()))}
    for im, a in zip(doc["images"], doc["annotations"]):
        e = fv.explain(bundle, src / im["file_name"], method="gradcam", target=a["category_id"])
        assert a["score"] == e.box_score and a["kind"] == e.box_kind and a["probability"] == pytest.approx(e.probability)
        assert float(table[im["file_name"]]["score"]) == pytest.approx(e.box_score, abs=1e-6)
    assert sum(summary["kinds"].values()) == 3 == summary["boxed"]


# ------------------------------------------------------------------ the explorer
def test_the_explorer_caption_and_cards_say_how_sure_the_box_is_and_who_drew_it():
    from fastloc_viz.widgets.cards import Cards
    from fastloc_viz.widgets.charts import overlay_title

    e = _explanation(_two_neurons(), None, "sum")
    assert overlay_title(e, [1, 2]).endswith("neurons all · box score 1.00")
    whole = e.replace(box=(0, 0, 6, 6), box_score=1.0, box_kind="whole")
    assert overlay_title(whole, [1, 2]).endswith("box score 1.00 (whole image)")
    cards = Cards(lambda *_: None, lambda *_: None)
    cards.render(e, "viridis")
    cards.show_shares(e, neuron_shares(e))
    assert ["33%" in c["share"].value for c in cards.cards] == [True, False]
    assert "67%" in cards.cards[1]["share"].value
    assert cards.class_card["share"].value == ""  # the sum rule has no class map
    cam = np.zeros((6, 6), np.float32)
    cam[2, 2], cam[2, 3], cam[3, 3] = 1.0, 0.5, 0.5
    refined = _explanation(_two_neurons(), cam, "refine_cam")
    cards.render(refined, "viridis")
    cards.show_shares(refined, neuron_shares(refined))
    assert "draws <b>90%</b>" in cards.class_card["share"].value  # 2 / 2.225
    assert "draws <b>0%</b>" in cards.cards[0]["share"].value


def test_a_live_explorer_shows_the_score_and_updates_the_shares_on_a_toggle():
    from fastloc_viz.widgets import NeuronExplorer

    torch.manual_seed(0)
    bundle = fv.load_model(TinyNet(), class_names=["a", "b", "c", "d"], input_size=(16, 16), layer="a3")
    image = np.random.default_rng(3).random((16, 16, 3)).astype(np.float32)
    ex = NeuronExplorer(bundle, image, debounce=0.01)
    try:
        assert ex.wait(60)  # the shares are drawn on the worker, after the display
        k = len(ex.explanation.neurons)
        caption = f"box score {ex.explanation.box_score:.2f}"
        assert caption in ex.overlay_fig.layout.title.text
        shares = neuron_shares(ex.explanation)
        shown = [float(c["share"].value.split("data-share='")[1].split("'")[0]) for c in ex.cards.cards[:k]]
        assert shown == pytest.approx([shares["neurons"][r] for r in range(1, k + 1)], abs=1e-6)
        ex.enabled = list(range(2, k + 1))  # neuron 1 off: it draws nothing, the caption follows the new box
        assert ex.wait(60)
        assert "data-share='0.000000'" in ex.cards.cards[0]["share"].value
        assert f"box score {ex.explanation.box_score:.2f}" in ex.overlay_fig.layout.title.text
    finally:
        ex.close()
