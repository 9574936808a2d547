"""The box answers the query: the peak's component by default, every component on request,
no box for an all-zero map (issue 13, part 2)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import TinyNet

import fastloc_viz as fv
from fastloc_viz.evaluation.runner import evaluate
from fastloc_viz.imaging.dataset import LocalizationDataset
from fastloc_viz.methods.base import Method, MethodParams, register_method, unregister_method

# An 8 x 8 map with a large dim component (rows 0-3, cols 0-3, 16 px at 0.5), a bright small
# one (the peak, rows 6-7, cols 6-7, 4 px at 1.0) and a middling speck (row 0, col 7: 0.8).
TWO_BLOBS = np.zeros((8, 8), np.float32)
TWO_BLOBS[0:4, 0:4] = 0.5
TWO_BLOBS[6:8, 6:8] = 1.0
TWO_BLOBS[0, 7] = 0.8


@pytest.fixture
def fixed_method():
    """A registered method whose map is whatever the test sets (``Fixed.map``)."""

    @register_method
    class Fixed(Method):
        name = "fixed_map_for_tests"
        label = "Fixed map"
        map = TWO_BLOBS

        @dataclass(frozen=True)
        class Params(MethodParams):
            sigma: float | None = 0.0

        def attribute(self, ctx, x, targets, params):
            return torch.from_numpy(np.repeat(self.map[None], len(x), axis=0))

    yield Fixed
    unregister_method(Fixed.name)


@pytest.fixture
def tiny_bundle():
    return fv.load_model(TinyNet(), class_names=["a", "b", "c", "d"], input_size=(8, 8), layer="a3")


def _image():
    return np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)


def test_the_default_box_is_the_peak_component_not_the_largest(fixed_method, tiny_bundle):
    e = fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=1, threshold=0.3)
    assert e.params["components"] == "peak"
    assert e.box == (6, 6, 8, 8)  # the bright component, where the class score peaks
    largest = fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=1, threshold=0.3, components="largest")
    assert largest.box == (0, 0, 4, 4)
    merged = fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=1, threshold=0.3, components="merged")
    assert merged.box == (0, 0, 8, 8)
    assert e.boxes is None and largest.boxes is None


def test_components_all_gives_every_component_with_its_score(fixed_method, tiny_bundle):
    e = fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=1, threshold=0.3, components="all")
    assert e.box == (6, 6, 8, 8)
    assert e.boxes == (((6, 6, 8, 8), 1.0), ((7, 0, 8, 1), 0.8), ((0, 0, 4, 4), 0.5))
    d = json.loads(e.to_json())
    assert [b["score"] for b in d["boxes"]] == [1.0, 0.8, 0.5]
    assert d["boxes"][2]["box"] == [0, 0, 4, 4]
    # Above 0.6 of the peak the dim component drops out; above 0.9 only the peak's is left.
    assert [b for b, _ in fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=1,
                                     threshold=0.6, components="all").boxes] == [(6, 6, 8, 8), (7, 0, 8, 1)]
    assert fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=1, threshold=0.9,
                      components="all").boxes == (((6, 6, 8, 8), 1.0),)


def test_an_all_zero_map_gives_no_box_and_a_warning(fixed_method, tiny_bundle, monkeypatch):
    monkeypatch.setattr(fixed_method, "map", np.zeros((8, 8), np.float32))
    with pytest.warns(UserWarning, match="all zero: no box"):
        e = fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=2)
    assert e.box is None and e.box_original is None
    d = e.to_dict()
    assert d["box"] is None and d["box_original"] is None
    from fastloc_viz.views import plots

    fig = plots.overlay(e)  # draws the map, no box
    assert [s.name for s in fig.layout.shapes] == []
    with pytest.warns(UserWarning, match="all zero"):
        e = fv.explain(tiny_bundle, _image(), method=fixed_method.name, target=2, components="all")
    assert e.boxes == ()


def test_recombine_with_every_neuron_off_gives_no_box(lite0):
    from skimage import data

    e = fv.explain(lite0, data.chelsea(), combine="sum")
    assert e.box is not None
    with pytest.warns(UserWarning, match="all zero: no box"):
        off = fv.recombine(e, enabled=[])
    assert off.box is None and float(off.saliency.max()) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = fv.recombine(off, enabled=None)
    assert back.box == e.box


def test_evaluate_counts_no_box_as_a_miss(fixed_method, tiny_bundle, tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray((_image() * 255).astype(np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "annotations.csv").write_text(
        "image,label,wnid,width,height,orig_width,orig_height,boxes\nimages/a.png,1,n0,8,8,8,8,0 0 8 8\n"
    )
    monkeypatch.setattr(fixed_method, "map", np.zeros((8, 8), np.float32))
    with pytest.warns(UserWarning, match="all zero"):
        res = evaluate(tiny_bundle, LocalizationDataset(tmp_path), [fixed_method.name], progress=False)
    m = res["methods"][fixed_method.name]
    # The whole-image box would have scored IoU 1 against this whole-image ground truth.
    assert m["gt_known_loc"] == 0.0 and m["maxboxacc_50"] == 0.0 and m["pointing"] == 0.0


def test_on_a_collage_the_box_follows_the_queried_class(lite0):
    """Astronaut | rocket side by side, queried for "space shuttle": the map peaks on the
    rocket; the default box is on the rocket even where another component is larger."""
    from PIL import Image
    from skimage import data

    left = Image.fromarray(data.astronaut()).resize((224, 224))
    right = Image.fromarray(data.rocket()).resize((224, 224))
    canvas = Image.new("RGB", (448, 224))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (224, 0))
    e = fv.explain(lite0, canvas, target="space shuttle", components="all")
    peak_x = np.unravel_index(int(np.argmax(e.saliency)), e.saliency.shape)[1]
    assert peak_x >= 112  # the right half of the 224-wide grid: the rocket
    x0, _, x1, _ = e.box
    assert (x0 + x1) / 2 >= 112
    assert e.boxes[0][0] == e.box and e.boxes[0][1] == 1.0
