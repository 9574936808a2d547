"""The explorer's per-neuron information: activation maps, drops (computed lazily by
fv.ablate on the worker), sorting by drop, the without-line, the atlas strips."""

from __future__ import annotations

import html

import numpy as np
import pytest

import fastloc_viz as fv
from fastloc_viz.neurons.ablation import ablate_channels
from fastloc_viz.widgets import NeuronExplorer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def bundle():
    return fv.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def photo():
    return fv.sample_image("chelsea")


@pytest.fixture(scope="module")
def atlas(bundle):
    photos = [fv.sample_image(n) for n in ("chelsea", "coffee", "astronaut", "rocket")]
    return fv.NeuronAtlas.build(bundle, photos, top=3, progress=False)


@pytest.fixture(scope="module")
def explorer(bundle, photo, atlas):
    e = fv.explain(bundle, photo)
    ex = NeuronExplorer(bundle, photo, explanation=e, atlas=atlas, debounce=0.05)
    assert ex.wait(300)
    return ex


def test_drops_are_computed_after_the_first_display(bundle, photo):
    e = fv.explain(bundle, photo)
    from fastloc_viz.model.layers import probe_layer_options

    probe_layer_options(bundle.model, e.layer, bundle.input_size)  # its one dry run, cached per model
    calls = []
    h = bundle.model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        ex = NeuronExplorer(bundle, photo, explanation=e, debounce=5.0)
        assert calls == []  # the display does not wait for the ablation
        assert "computing what each neuron does" in ex.without.value
        assert all(c["drop"].value == "" for c in ex._cards[:5])
        assert ex.wait(300)
    finally:
        h.remove()
    # then: the ablation (2k + 3 copies) and the other subsets (2**k - k - 2), two forward passes
    assert sorted(calls)[-2:] == sorted([2 * 5 + 3, 2**5 - 5 - 2])
    assert ex.ablation is not None
    ex.close()


def test_cards_show_activation_maps_drops_and_atlas_strips(explorer, bundle, atlas):
    e, a = explorer.explanation, explorer.ablation
    ref = fv.ablate(bundle, explorer.base_explanation)
    np.testing.assert_allclose(a.channel_drops, ref.channel_drops, rtol=1e-4, atol=1e-6)
    captions = []
    for card, d, n in zip(explorer._cards, a.channel_drops, e.neurons):
        assert f"data-drop='{d:.6f}'" in card["drop"].value and "drop" in card["drop"].value
        assert card["activation"].value and card["activation"].value != card["image"].value
        assert card["atlas"].value and card["atlas"].layout.display is None
        # the card's own channel, its most negative units for a negative activation (when
        # the atlas holds them), the labels of its top four in order
        sign = -1 if n.activation < 0 and -1 in atlas.signs else 1
        words = [", ".join(u.labels) or u.image.rsplit("/", 1)[-1] for u in atlas.top(n.channel, 4, sign)]
        expected = ("top" if sign > 0 else "most negative") + ": " + " · ".join(html.escape(w) for w in words)
        assert words and expected in card["atlas_text"].value, (n.channel, card["atlas_text"].value)
        captions.append(expected)
    assert len(set(captions)) > 1  # the cards' captions differ: a mix-up of channels would show
    assert "guided-backprop maps correlate" in explorer.similarity.value


def test_sorting_by_drop_and_back(explorer):
    a = explorer.ablation
    explorer.sort_buttons.value = "drop"
    shown = [c for c in explorer.cards_box.children if c is not explorer.class_card["box"]]
    ranks = [next(c["rank"] for c in explorer._cards if c["box"] is b) for b in shown]
    assert ranks == [r for _, r in sorted(zip(a.channel_drops, a.ranks), key=lambda t: (-t[0], t[1]))]
    explorer.sort_buttons.value = "rank"
    shown = [c for c in explorer.cards_box.children if c is not explorer.class_card["box"]]
    assert [next(c["rank"] for c in explorer._cards if c["box"] is b) for b in shown] == [1, 2, 3, 4, 5]
    assert explorer.error.layout.display == "none"


def test_unticking_shows_the_prediction_without_them_and_runs_no_pass(explorer, bundle):
    a = explorer.ablation
    calls = []
    h = bundle.model.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        explorer._cards[1]["check"].value = False  # neuron #2
        one = explorer.without.value
        explorer.enabled = (1, 3)
        some = explorer.without.value
        explorer.enabled = ()
        none = explorer.without.value
    finally:
        h.remove()
        explorer.enabled = (1, 2, 3, 4, 5)
    assert calls == []
    assert f"Without #2 (channel {a.channels[1]} zeroed)" in one
    assert f"{a.channel_off[1].probability:.1%}" in one
    sub = ablate_channels(bundle, explorer.base_explanation, [[a.channels[i] for i in (1, 3, 4)]])[0]
    assert "Without #2, #4, #5" in some and f"{sub.probability:.1%}" in some and sub.top.name in some
    assert f"{a.all_off.probability:.1%}" in none and a.all_off.top.name in none


def test_an_atlas_of_another_layer(bundle, photo, atlas):
    with pytest.raises(ValueError, match="atlas is for layer '_blocks.15'"):
        NeuronExplorer(bundle, photo, layer="_blocks.14", atlas=atlas)


def test_an_ablation_error_is_shown_in_the_error_box(bundle, photo, monkeypatch):
    from fastloc_viz.widgets import effects

    def boom(*_a, **_k):
        raise RuntimeError("ablation failed")

    monkeypatch.setattr(effects, "ablate", boom)
    ex = NeuronExplorer(bundle, photo, k=2, debounce=0.01)
    assert ex.wait(300)
    assert ex.error.layout.display == "block" and "ablation failed" in ex.error.value
    assert "could not be computed" in ex.without.value
    ex.enabled = (1,)  # the widget keeps working
    assert ex.enabled == (1,)
    ex.close()
