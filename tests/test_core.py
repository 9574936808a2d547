"""The core: the guided rule, the ranking, the neuron passes, the baselines, explain()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
    NeuronGuidedBackprop,
)
from conftest import ACTS, TinyNet, assert_same_state, model_state
from torch import nn
from torch.testing import assert_close

import fastloc_viz as fv
from fastloc_viz.core.maps import normalize
from fastloc_viz.engine import captum_maps
from fastloc_viz.engine.guided import GuidedMode
from fastloc_viz.engine.neuron_passes import grads_to_maps, neuron_pass
from fastloc_viz.engine.ranking import rank_neurons
from fastloc_viz.methods.combine import combine_maps, recombine
from fastloc_viz.model.state import hook_counts, preserved


def _input(seed=1, n=2, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the guided rule -------------------------------------------------------------------


def test_guided_rule_exact_numbers():
    """y = w . relu(x): guided passes the gradient only where x > 0 and the gradient > 0."""
    w = torch.tensor([1.0, -1.0, 2.0, 3.0])
    x = torch.tensor([1.0, 2.0, -1.0, 0.5], requires_grad=True)
    with GuidedMode():
        y = (w * F.relu(x)).sum()
    (g,) = torch.autograd.grad(y, x)
    assert g.tolist() == [1.0, 0.0, 0.0, 3.0]
    (plain,) = torch.autograd.grad((w * F.relu(x)).sum(), x)
    assert plain.tolist() == [1.0, -1.0, 0.0, 3.0]


def test_relu6_passes_only_inside_the_clamp():
    x = torch.tensor([-1.0, 3.0, 7.0, 5.0], requires_grad=True)
    w = torch.tensor([1.0, 1.0, 1.0, -1.0])
    with GuidedMode():
        y = (w * nn.ReLU6()(x)).sum()
    (g,) = torch.autograd.grad(y, x)
    assert g.tolist() == [0.0, 1.0, 0.0, 0.0]


def _reference_guided(model: TinyNet, x: torch.Tensor, target: int) -> torch.Tensor:
    """Brute force: layer by layer by hand, gating at every activation."""
    lo_hi = {"relu6": [(0, 6), (0, 6), (0, 6)]}.get(model.act, [(0, None)] * 3)
    z1 = model.conv1(x)
    a1 = z1.clamp(*lo_hi[0])
    z2 = model.conv2(a1)
    a2 = z2.clamp(*lo_hi[1])
    z3 = model.conv3(a2)
    h, w = z3.shape[-2:]

    def gate(g, z, lh):
        lo, hi = lh
        inside = (z > lo) if hi is None else (z > lo) & (z < hi)
        return g.clamp(min=0) * inside

    g = model.fc.weight[target][None, :, None, None].expand_as(z3) / (h * w)
    g = gate(g, z3, lo_hi[2])
    g = torch.nn.grad.conv2d_input(a2.shape, model.conv3.weight, g, padding=1)
    g = gate(g, z2, lo_hi[1])
    g = torch.nn.grad.conv2d_input(a1.shape, model.conv2.weight, g, padding=1, stride=2)
    g = gate(g, z1, lo_hi[0])
    return torch.nn.grad.conv2d_input(x.shape, model.conv1.weight, g, padding=1)


def test_guided_rule_matches_brute_force(tiny):
    x = _input().requires_grad_(True)
    with torch.no_grad():
        ref = _reference_guided(tiny, x, 2)
    with GuidedMode() as mode:
        out = tiny(x)
    (g,) = torch.autograd.grad(out[:, 2].sum(), x)
    assert mode.treated == 3
    assert_close(g, ref)


def test_forward_unchanged_under_guided_mode(tiny):
    x = _input()
    with torch.no_grad():
        ref = tiny(x)
    with GuidedMode():
        out = tiny(x)
    assert torch.equal(out.detach(), ref)


def test_untreated_activation_is_named_in_a_warning():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    bundle = fv.load_model(model, input_size=16)
    with pytest.warns(UserWarning, match=r"\['silu'\]"):
        fv.explain(bundle, _input(n=1, size=16)[0].sigmoid(), method="guided_backprop")


# --- equal to Captum where Captum is right (plain nn.ReLU) --------------------------------


@pytest.fixture
def relu_net():
    return TinyNet("relu").eval()


def test_guided_backprop_equals_captum(relu_net):
    x = _input()
    ours, _ = captum_maps.guided_backprop(relu_net, x, torch.tensor([1, 3]))
    theirs = GuidedBackprop(relu_net).attribute(x, target=torch.tensor([1, 3]))
    assert_close(ours, theirs)


def test_neuron_maps_equal_captum_neuron_guided_backprop(relu_net):
    x = _input()
    with preserved(relu_net):
        npass = neuron_pass(relu_net, x, ("conv3", relu_net.conv3), [0, 2], k=4)
    ngb = NeuronGuidedBackprop(relu_net, relu_net.conv3)
    for i in range(2):
        for j in range(4):
            c, y, xx = (int(t[i, j]) for t in npass.ranked[:3])
            theirs = ngb.attribute(x[i : i + 1], neuron_selector=(c, y, xx))
            assert_close(npass.input_grads[i, j], theirs[0])


def test_gradcam_and_guided_gradcam_equal_captum(relu_net):
    x = _input()
    t = torch.tensor([0, 2])
    cam = captum_maps.gradcam(relu_net, x, relu_net.a3, t)
    ref = LayerAttribution.interpolate(
        LayerGradCam(relu_net, relu_net.a3).attribute(x, target=t, relu_attributions=True), (8, 8), "bilinear"
    )
    assert_close(cam, ref)
    ggc, _ = captum_maps.guided_gradcam(relu_net, x, relu_net.a3, t)
    theirs = GuidedGradCam(relu_net, relu_net.a3).attribute(x, target=t, interpolate_mode="bilinear")
    assert_close(ggc, theirs)


def test_captum_guided_backprop_is_plain_gradient_on_relu6_but_ours_is_not():
    model = TinyNet("relu6").eval()
    x = _input()
    captum = GuidedBackprop(model).attribute(x, target=1)
    plain = torch.autograd.grad(model(x.requires_grad_(True))[:, 1].sum(), x)[0]
    ours, _ = captum_maps.guided_backprop(model, x.detach(), torch.tensor([1, 1]))
    assert_close(captum, plain)  # the trap: Captum silently returns the plain gradient
    assert not torch.allclose(ours, plain)
    assert_close(ours, _reference_guided(model, x.detach(), 1))


# --- ranking and neuron passes -----------------------------------------------------------


def _brute_rank(scores: torch.Tensor, k: int):
    n, c, h, w = scores.shape
    out = []
    for i in range(n):
        flat = scores[i].flatten().tolist()
        order = sorted(range(len(flat)), key=lambda j: (-flat[j], j))
        kept, seen = [], set()
        for j in order:
            ch = j // (h * w)
            if ch not in seen:
                seen.add(ch)
                kept.append((ch, (j % (h * w)) // w, j % w, flat[j]))
            if len(kept) == k:
                break
        out.append(kept)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_ranking_matches_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (3, 7, 4, 5), generator=g).float()  # many ties
    r = rank_neurons(scores, 5)
    got = [[(int(r.channel[i, j]), int(r.y[i, j]), int(r.x[i, j]), float(r.score[i, j])) for j in range(5)] for i in range(3)]
    assert got == _brute_rank(scores, 5)


def test_rank_scores_are_activation_times_gradient(tiny):
    x = _input()
    with preserved(tiny):
        npass = neuron_pass(tiny, x, ("conv3", tiny.conv3), [1, None], k=3, rank_grad="plain")
    acts = {}
    h = tiny.conv3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    out = tiny(x)
    h.remove()
    tgt = npass.targets
    (g,) = torch.autograd.grad(out.gather(1, tgt[:, None]).sum(), acts["a"])
    assert tgt[0] == 1 and tgt[1] == int(out[1].argmax())
    assert_close(npass.ranked.score, npass.activation * npass.gradient)
    r = rank_neurons(acts["a"].detach() * g, 3)
    assert torch.equal(r.channel, npass.ranked.channel)
    assert_close(npass.gradient, g.flatten(1).gather(1, r.channel * 16 + r.y * 4 + r.x))


def test_batched_passes_equal_the_loop(tiny):
    x = _input(n=3)
    with preserved(tiny):
        loop = neuron_pass(tiny, x, ("conv3", tiny.conv3), [None] * 3, k=5, passes="loop")
        batched = neuron_pass(tiny, x, ("conv3", tiny.conv3), [None] * 3, k=5, passes="batched")
    assert_close(loop.input_grads, batched.input_grads)
    assert loop.input_grads.abs().sum() > 0


@pytest.mark.parametrize("rank_grad", ["guided", "plain"])
def test_rank_grad_is_guided_or_plain_above_the_layer(relu_net, rank_grad):
    x = _input()
    with preserved(relu_net):
        npass = neuron_pass(relu_net, x, ("conv2", relu_net.conv2), [0, 0], k=8, rank_grad=rank_grad)
    grads = {}
    for mode in ("guided", "plain"):
        acts = {}
        h = relu_net.conv2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
        with GuidedMode(guided=mode == "guided"):
            out = relu_net(x)
        h.remove()
        grads[mode] = torch.autograd.grad(out[:, 0].sum(), acts["a"])[0].flatten(1)
    assert (grads["guided"] >= 0).all() and (grads["plain"] < 0).any()
    r = npass.ranked
    where = r.channel * 16 + r.y * 4 + r.x
    assert_close(npass.gradient, grads[rank_grad].gather(1, where))


# --- explain() --------------------------------------------------------------------------


@pytest.mark.parametrize("method", fv.METHODS)
def test_explain_shapes_and_fields(relu_net, method):
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    bundle = fv.load_model(relu_net, input_size=8, layer="conv3", class_names=list("abcd"))
    e = fv.explain(bundle, img, method=method, k=3, kmax=4, target="c", window=4, stride=2)
    assert e.target == 2 and e.target_name == "c"
    assert e.saliency.shape == (8, 8) and e.saliency.dtype == np.float32
    assert 0 <= e.saliency.min() and e.saliency.max() <= 1
    x0, y0, x1, y1 = e.box
    assert 0 <= x0 < x1 <= 8 and 0 <= y0 < y1 <= 8
    assert len(e.top5) == 4 and abs(sum(p.probability for p in e.top5) - 1) < 1e-5
    assert e.image.shape == (8, 8, 3) and e.time_s > 0
    if method.startswith("fastloc"):
        assert len(e.neurons) == 3 and e.neuron_maps.shape == (3, 8, 8)
        assert [n.rank for n in e.neurons] == [1, 2, 3]
        assert len({n.channel for n in e.neurons}) == 3
        assert e.layer == "conv3" and e.layer_shape == (8, 4, 4)
    else:
        assert e.neurons is None


def test_batch_of_images_gives_one_explanation_each(relu_net):
    imgs = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for method in fv.METHODS:
        es = fv.explain(relu_net, imgs, method=method, layer="conv3", target=[0, 1, None], k=2, kmax=3)
        assert [e.target for e in es[:2]] == [0, 1]
        single = fv.explain(relu_net, imgs[1], method=method, layer="conv3", target=1, k=2, kmax=3)
        assert_close(es[1].saliency, single.saliency, msg=lambda m: f"{method}: {m}")
        assert es[1].box == single.box


def test_rescored_keeps_best_k_by_masked_score(relu_net):
    """Of the kmax candidates, the k whose blob alone (the input masked to it) gives the
    highest target logit, best first; the logits recomputed here with a plain forward pass."""
    from fastloc_viz.core.maps import blobs
    from fastloc_viz.imaging.batch import load_batch

    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    bundle = fv.load_model(relu_net, input_size=8, layer="conv3")
    e = fv.explain(bundle, img, method="fastloc_rescored", k=3, kmax=6)
    every = fv.explain(bundle, img, method="fastloc", k=6)  # the same six candidates, by rank
    x = bundle.preprocess(load_batch(img, bundle.input_size, bundle.interpolation))
    with torch.no_grad():
        masks = torch.from_numpy(blobs(every.neuron_maps)).float()[:, None]
        logits = relu_net(x * masks)[:, e.target].tolist()
    best = sorted(range(6), key=lambda j: (-logits[j], j))[:3]
    worst = sorted(range(6), key=lambda j: (logits[j], j))[:3]
    assert best != [0, 1, 2] and set(best) != set(worst)  # neither rank order nor the worst k passes
    assert [n.channel for n in e.neurons] == [every.neurons[j].channel for j in best]
    assert [n.rescored for n in e.neurons] == pytest.approx([logits[j] for j in best], rel=1e-5)


def test_recombine_uses_cached_maps(relu_net, monkeypatch):
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    e = fv.explain(relu_net, img, layer="conv3", k=4, sigma=0, combine="sum")
    calls = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1))
    r = recombine(e, [1])
    assert calls == []
    assert_close(r.saliency, e.neuron_maps[0] / e.neuron_maps[0].max())
    assert recombine(e).box == e.box
    with pytest.raises(ValueError, match="do not exist"):
        recombine(e, [9])


def test_class_map_is_the_layers_gradcam_from_the_same_pass(relu_net):
    """The probe layer's Grad-CAM falls out of the ranking's backward pass: equal to Captum's."""
    img = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    fast = fv.explain(relu_net, img, layer="conv3", k=2, target=[1, 3])
    cams = fv.explain(relu_net, img, method="gradcam", layer="conv3", target=[1, 3])
    for e, c in zip(fast, cams):
        assert e.class_map.max() == pytest.approx(1.0)
        assert_close(e.class_map, c.saliency)  # Grad-CAM's saliency: its map, unsmoothed, max 1
        assert e.params["combine"] == "refine_cam"


def test_cam_rules_add_the_class_map_to_the_neuron_mean():
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0, 0, 0] = maps[1, 2, 2] = 1.0  # mean: 0.5 at two corners, scaled to 1
    cam = np.zeros((3, 3), np.float32)
    cam[0, 0], cam[1, 1] = 1.0, 4.0  # scaled: 0.25 and 1
    out = combine_maps(maps, rule="sum_cam", sigma=0, class_map=cam)
    want = np.zeros((3, 3))
    want[0, 0], want[1, 1], want[2, 2] = 1.25, 1.0, 1.0
    np.testing.assert_allclose(out, want / 1.25, rtol=1e-6)
    np.testing.assert_allclose(combine_maps(maps[:0], rule="sum_cam", class_map=cam), cam / 4)
    # gate_cam: the neuron at (2, 2), where the class map is 0, is muted
    gated = combine_maps(maps, rule="gate_cam", sigma=0, class_map=cam)
    want[2, 2] = 0.0
    np.testing.assert_allclose(gated, want / 1.25, rtol=1e-6)
    with pytest.raises(ValueError, match="combine='gate_cam' needs the probe layer's class map"):
        combine_maps(maps, rule="gate_cam")
    with pytest.raises(ValueError, match=r"class_map has shape \(2, 2\)"):
        combine_maps(maps, rule="sum_cam", class_map=np.ones((2, 2)))


def test_recombine_cam_rules_keep_the_class_map(relu_net):
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(5))
    e = fv.explain(relu_net, img, layer="conv3", k=3, sigma=0)
    assert_close(recombine(e, []).saliency, e.class_map)
    m, cam = e.neuron_maps[1], e.class_map
    norm = normalize
    g = norm(m * cam * cam)
    assert_close(recombine(e, [2]).saliency, cam + 0.9 * (1 - cam) * g)  # refine_cam, the default
    assert_close(recombine(e, [2], combine="gate_cam").saliency, norm(norm(m * cam) + cam))
    assert_close(recombine(e, [2], combine="sum_cam").saliency, norm(norm(m) + cam))


def test_maps_are_channel_mean_positive_part_normalized():
    g = torch.tensor([[[[1.0, -3.0]], [[2.0, 0.0]], [[0.0, 0.0]]]])  # 1 x 3 x 1 x 2
    assert grads_to_maps(g).tolist() == [[[1.0, 0.0]]]


# --- the user's model is left exactly as it was ------------------------------------------


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def _raising(model: TinyNet) -> TinyNet:
    model.conv3 = nn.Sequential(model.conv3, Boom())
    return model


@pytest.mark.parametrize("method", fv.METHODS)
@pytest.mark.parametrize("case", ["normal", "bad_target", "raising_layer"])
@pytest.mark.parametrize("act", ACTS)
def test_model_state_restored(method, case, act):
    model = TinyNet(act)
    if case == "raising_layer":
        model = _raising(model)
    model.train()  # must come back in training mode
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = model_state(model)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    if case != "raising_layer":
        with torch.no_grad():
            ref = model.eval()(x)
        model.train()
    kwargs = dict(method=method, layer="conv3", k=2, kmax=3)
    if case == "normal":
        fv.explain(model, x, **kwargs)
    else:
        with pytest.raises((LookupError, RuntimeError)):
            fv.explain(model, x, target=99 if case == "bad_target" else None, **kwargs)
    assert_same_state(before, model_state(model))
    if case != "raising_layer":
        with torch.no_grad():
            assert torch.equal(model.eval()(x), ref)


def test_state_restored_under_no_grad_and_inference_mode(relu_net):
    img = torch.rand(3, 8, 8)
    with torch.no_grad():
        a = fv.explain(relu_net, img, layer="conv3", k=2)
    with torch.inference_mode():
        b = fv.explain(relu_net, img, layer="conv3", k=2)
    assert_close(a.saliency, b.saliency)
    assert sum(hook_counts(relu_net).values()) == 0


# --- torchvision architectures with inplace ReLUs ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_torchvision_architectures(name):
    bundle = fv.load_model(name, weights=None)
    assert any(getattr(m, "inplace", False) for m in bundle.model.modules())
    before = model_state(bundle.model)
    img = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected_layer = {"vgg16": "features", "resnet50": "layer4"}[name]  # the stride-32 map
    # the costly methods with few copies per image: Score-CAM at a 64-channel layer (one
    # forward per channel: 512 / 2048 VGG / ResNet forwards at the default layer), occlusion
    # with four windows, integrated gradients with 4 steps, SmoothGrad with 2 samples
    small_scorecam = {"vgg16": "features.4", "resnet50": "maxpool"}[name]
    cheap = {"scorecam": {"layer": small_scorecam, "batch_size": 32}, "occlusion": {"window": 112, "stride": 112},
             "integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2}}
    for method in fv.METHODS:
        e = fv.explain(bundle, img, method=method, kmax=6, **cheap.get(method, {}))
        assert e.saliency.shape == (224, 224)
        layer = small_scorecam if method == "scorecam" else expected_layer
        assert e.layer == (layer if fv.get_method(method).uses_layer else None)
        if method.startswith("fastloc"):
            assert e.neuron_maps.shape == (5, 224, 224) and e.class_map.shape == (224, 224)
            assert np.isfinite(e.neuron_maps).all() and e.neuron_maps.max() == 1
    assert_same_state(before, model_state(bundle.model))


def test_missing_torchvision_weights_explain_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="weights=None"):
        fv.load_model("resnet18", download=False)


# --- the real pretrained model on real photos -------------------------------------------

CAT_BOX = (0, 0, 195, 224)  # chelsea resized to 224 x 224: the cat fills the left 87 %


@pytest.mark.slow
def test_lite0_finds_the_cat(lite0):
    img = fv.sample_image("chelsea")
    e = fv.explain(lite0, img)
    assert e.target_name in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
    # IoU 0.9 with the cat: the background strip on the right must stay out (a whole-image
    # box scores 195 / 224 = 0.87; the default box (0, 0, 204, 224) 0.96)
    from fastloc_viz.evaluation.metrics import iou

    assert iou(e.box, CAT_BOX) >= 0.9, e.box
    assert iou((0, 0, 224, 224), CAT_BOX) < 0.9


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_and_lite2_load_offline_and_find_the_cat(name, size):
    """The lite1 / lite2 extras: their own input size and probe layer, the right classes
    with confidence (weights and the [-1, 1] scaling right), a box on the cat that is not the
    whole photo, and the model left as it was."""
    bundle = fv.load_model(name)
    assert bundle.input_size == (size, size) and bundle.default_layer == "_blocks.20"
    before = model_state(bundle.model)
    for photo, cls in (("chelsea", "Egyptian cat"), ("coffee", "espresso")):
        e = fv.explain(bundle, fv.sample_image(photo))
        assert e.target_name == cls and e.probability > 0.6, (photo, e.target_name, e.probability)
        assert e.saliency.shape == (size, size) and e.layer == "_blocks.20"
        x0, y0, x1, y1 = e.box
        assert (x1 - x0) * (y1 - y0) < 0.9 * size * size  # not the whole photo
        if photo == "chelsea":
            cat = [v * size / 224 for v in CAT_BOX]
            assert cat[0] <= (x0 + x1) / 2 <= cat[2] and cat[1] <= (y0 + y1) / 2 <= cat[3]
    assert_same_state(before, model_state(bundle.model))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fastloc", "gradcam"])
@pytest.mark.parametrize("photos", [("chelsea", "coffee"), ("chelsea", "coffee", "rocket", "astronaut")])
def test_class_query_on_a_collage(lite0, method, photos):
    """Ask for each photo's class: the map's peak falls inside that photo."""
    from fastloc_viz.imaging.batch import collage

    classes = [fv.explain(lite0, fv.sample_image(p), method="gradcam").target for p in photos]
    cols = 2
    rows = len(photos) // cols
    bundle = fv.load_model("efficientnet_lite0", input_size=(224 * rows, 224 * cols))
    img = collage([fv.sample_image(p) for p in photos], size=224, cols=cols)
    for q, cls in enumerate(classes):
        e = fv.explain(bundle, img, method=method, target=cls)
        y, x = np.unravel_index(e.saliency.argmax(), e.saliency.shape)
        assert (y // 224) * cols + x // 224 == q, (photos[q], e.target_name)


# --- CLI --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_explain_writes_html_and_json(tmp_path, capsys):
    import json

    from fastloc_viz.cli import main

    out = tmp_path / "dir with spaces" / "rapport é.html"
    assert main(["explain", "sample:chelsea", "--out", str(out), "--json", "-k", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "fastloc" and len(doc["neurons"]) == 3
    assert set(doc["baselines"]) == {"gradcam", "guided_backprop", "guided_gradcam"}
    assert len(doc["box"]) == 4 and doc["timings"]
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") or "<html" in html[:500]
    assert "Plotly.newPlot" in html and '<script src="http' not in html  # self-contained


@pytest.mark.slow
def test_cli_demo_summary(tmp_path, capsys):
    from fastloc_viz.cli import main

    assert main(["demo", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Egyptian cat" in text and "neuron 5" in text and "report:" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-chelsea.html", "demo-coffee.html"]


# --- one pass at a time on a model ---------------------------------------------------------


def _entry_points(bundle, img):
    """Every kind of pass the toolkit runs on a model, each a callable."""
    from fastloc_viz.evaluation.faithfulness import faithfulness
    from fastloc_viz.evaluation.sanity import sanity_check

    e = fv.explain(bundle, img, k=2)
    return {
        "explain": lambda: fv.explain(bundle, img, k=2),
        "ablate": lambda: fv.ablate(bundle, e),
        "atlas": lambda: fv.NeuronAtlas.build(bundle, [img, img], top=1, progress=False, patch_px=8),
        "faithfulness": lambda: faithfulness(bundle, img, e.saliency, steps=2),
        "sanity": lambda: sanity_check(bundle, img, methods=["gradcam"], depths=[1]),
    }


def test_every_pass_waits_for_the_models_lock():
    """explain, ablate, the atlas, faithfulness and sanity started on other threads wait while
    another thread holds the model's lock, then all run."""
    import threading

    from fastloc_viz.model.state import one_pass

    bundle = fv.load_model(TinyNet("relu").eval(), input_size=8, layer="conv3", class_names=list("abcd"))
    calls = _entry_points(bundle, _input(n=1)[0].sigmoid())
    done, errors = [], []

    def run(name, fn):
        try:
            fn()
            done.append(name)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append((name, err))

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    with one_pass(bundle.model):
        for t in threads:
            t.start()
        threads[0].join(1.0)  # each would take milliseconds
        assert done == [] and errors == []
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(done) == sorted(calls)


def test_a_cancelled_wait_for_the_model_raises_cancelled_and_runs_nothing(relu_net):
    import threading

    from fastloc_viz.model.state import Cancelled, cancel_with, one_pass

    cancel, out = threading.Event(), []
    forwards = []
    relu_net.register_forward_pre_hook(lambda *_: forwards.append(1))

    def job():
        try:
            with cancel_with(cancel):
                fv.explain(relu_net, _input(n=1)[0].sigmoid(), layer="conv3", k=2)
            out.append("ran")
        except Cancelled:
            out.append("cancelled")

    t = threading.Thread(target=job)
    with one_pass(relu_net):  # a pass of someone else's in flight
        t.start()
        t.join(0.5)
        assert t.is_alive()  # waiting its turn
        cancel.set()
        t.join(5)
        assert not t.is_alive()
    assert out == ["cancelled"] and forwards == []
    # the same thread, once its cancel is over, runs again; the lock is re-entrant
    with one_pass(relu_net), cancel_with(threading.Event()):
        fv.explain(relu_net, _input(n=1)[0].sigmoid(), layer="conv3", k=2)
    assert forwards
