"""The pixel attributions (issue 21): saliency, integrated gradients, SmoothGrad and occlusion
against Captum called directly; one ``batch_size`` for every method's inner passes; every
new method on VGG / ResNet and on tiny models, leaving each model exactly as it was, also
when it raises; the parameters' checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from conftest import TinyNet, assert_same_state, model_state
from torch import nn

import fastloc_viz as fv
from fastloc_viz.core.maps import normalize
from fastloc_viz.model.bundle import as_logits

NEW = ("gradcam_pp", "xgradcam", "layercam", "scorecam", "eigencam",
       "saliency", "integrated_gradients", "smoothgrad", "occlusion")
FEW = {"steps": 4, "samples": 3}  # cheap settings for the tests that only need a map


def _tiny(act="relu_inplace", **kw):
    return fv.load_model(TinyNet(act, **kw).eval(), class_names=list("abcd"), input_size=(8, 8), layer="a3")


def _x(bundle, e):
    return bundle.preprocess(torch.from_numpy(e.image).permute(2, 0, 1)[None])


def _forward(bundle):
    return lambda inp: as_logits(bundle.model(inp))


# ---------------------------------------------------------------- Captum, called directly
@pytest.fixture(scope="module")
def cat():
    return fv.sample_image("chelsea")


@pytest.mark.slow
def test_saliency_and_integrated_gradients_equal_captum_on_lite0(lite0, cat):
    e = fv.explain(lite0, cat, method="saliency", sigma=0)
    x, t = _x(lite0, e), torch.tensor([e.target])
    theirs = Saliency(_forward(lite0)).attribute(x.requires_grad_(True), target=t, abs=True)
    np.testing.assert_allclose(e.saliency, normalize(theirs.amax(1)[0].numpy()), atol=1e-5)

    e = fv.explain(lite0, cat, method="integrated_gradients", sigma=0, steps=6, batch_size=4)
    x = _x(lite0, e)
    black = lite0.preprocess(torch.zeros_like(x))
    theirs = IntegratedGradients(_forward(lite0)).attribute(x, baselines=black, target=t, n_steps=6)
    np.testing.assert_allclose(e.saliency, normalize(theirs.sum(1)[0].numpy()), atol=1e-4)
    assert e.params["steps"] == 6 and e.params["baseline"] == "black"


@pytest.mark.slow
def test_smoothgrad_and_occlusion_equal_captum_on_lite0(lite0, cat):
    e = fv.explain(lite0, cat, method="smoothgrad", sigma=0, samples=4, noise=0.2, seed=7, batch_size=2)
    x, t = _x(lite0, e), torch.tensor([e.target])
    stdev = 0.2 * float((1 / torch.tensor(lite0.std)).mean())  # the input's span: 1 / std
    torch.manual_seed(7)
    theirs = NoiseTunnel(Saliency(_forward(lite0))).attribute(
        x.requires_grad_(True), nt_type="smoothgrad", nt_samples=4, nt_samples_batch_size=2, stdevs=stdev,
        target=t, abs=True)
    np.testing.assert_allclose(e.saliency, normalize(theirs.amax(1)[0].numpy()), atol=1e-5)

    e = fv.explain(lite0, cat, method="occlusion", sigma=0, window=64, stride=40, batch_size=16)
    theirs = Occlusion(_forward(lite0)).attribute(
        _x(lite0, e), sliding_window_shapes=(3, 64, 64), strides=(3, 40, 40), baselines=0.0, target=t)
    np.testing.assert_allclose(e.saliency, normalize(theirs.mean(1)[0].numpy()), atol=1e-5)


# ---------------------------------------------------------------- batch_size
@pytest.mark.parametrize("method, params", [
    ("integrated_gradients", {"steps": 5}), ("occlusion", {"window": 4, "stride": 2}),
    ("scorecam", {}), ("smoothgrad", {"samples": 5}),
])
def test_batch_size_changes_the_passes_not_the_map(method, params):
    bundle = _tiny(seed=1)
    bundle.model.double()
    img = np.random.default_rng(0).random((8, 8, 3))
    one = fv.explain(bundle, img, method=method, batch_size=1, sigma=0, **params)
    many = fv.explain(bundle, img, method=method, batch_size=64, sigma=0, **params)
    assert one.saliency.max() == 1.0
    np.testing.assert_allclose(one.saliency, many.saliency, atol=1e-6)


def test_batch_size_bounds_every_forward_pass():
    """No forward pass holds more than ``batch_size`` inputs (images, steps, windows, masks)."""
    bundle = _tiny()
    sizes: list[int] = []
    handle = bundle.model.conv1.register_forward_pre_hook(lambda m, inp: sizes.append(len(inp[0])))
    try:
        for method in NEW:
            sizes.clear()
            fv.explain(bundle, [np.random.default_rng(i).random((8, 8, 3)) for i in range(2)], method=method,
                       batch_size=4, window=4, stride=2, steps=9, samples=5)
            assert max(sizes) <= 4 and len(sizes) > 1, (method, sizes)
    finally:
        handle.remove()


def test_smoothgrad_leaves_the_random_state_and_is_seeded():
    bundle, img = _tiny(), torch.rand(3, 8, 8)
    state = torch.get_rng_state()
    a = fv.explain(bundle, img, method="smoothgrad", seed=3, samples=4)
    assert torch.equal(state, torch.get_rng_state())
    b = fv.explain(bundle, a.image, method="smoothgrad", seed=3, samples=4)
    c = fv.explain(bundle, a.image, method="smoothgrad", seed=4, samples=4)
    assert np.array_equal(a.saliency, b.saliency) and not np.array_equal(a.saliency, c.saliency)


# ---------------------------------------------------------------- the model is left alone
class Failing(TinyNet):
    """Raises in its ``fail_at``-th forward pass, after the probe layer ran."""

    def __init__(self, fail_at: int):
        super().__init__("relu_inplace")
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return out


@pytest.mark.parametrize("method", NEW)
def test_each_method_leaves_the_model_as_it_was_also_when_it_raises(method):
    net = TinyNet("relu_inplace")
    bundle = fv.load_model(net, class_names=list("abcd"), input_size=(8, 8), layer="a3")
    net.train()  # (load_model puts it in eval mode; a user may switch back)
    net.conv1.weight.requires_grad_(False)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    before = model_state(net)
    e = fv.explain(bundle, torch.rand(3, 8, 8), method=method, window=4, stride=2, **FEW)
    assert e.saliency.shape == (8, 8) and np.isfinite(e.saliency).all()
    assert_same_state(before, model_state(net))
    assert net.training
    counting = Failing(0)
    counted = fv.load_model(counting, class_names=list("abcd"), input_size=(8, 8), layer="a3")
    counting.calls = 0
    fv.explain(counted, torch.rand(3, 8, 8), method=method, window=4, stride=2, batch_size=2, **FEW)
    for fail_at in {2, counting.calls}:  # the method's first and last pass (the logits come first)
        failing = Failing(fail_at)
        bundle = fv.load_model(failing, class_names=list("abcd"), input_size=(8, 8), layer="a3")
        failing.train()
        failing.calls = 0  # (load_model may have run it)
        before = model_state(failing)
        with pytest.raises(RuntimeError, match="boom"):
            fv.explain(bundle, torch.rand(3, 8, 8), method=method, window=4, stride=2, batch_size=2, **FEW)
        assert_same_state(before, model_state(failing))
        assert failing.training


# ---------------------------------------------------------------- other models
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_every_method_on_torchvision_models(arch):
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    bundle = fv.load_model(net, input_size=64)
    img = np.random.default_rng(0).random((80, 60, 3)).astype(np.float32)
    before = model_state(net)
    for method in NEW:
        if arch == "vgg11" and method == "scorecam":  # 512 masked passes of VGG: covered by resnet18
            continue
        e = fv.explain(bundle, img, method=method, batch_size=64, **FEW)
        assert e.saliency.shape == (64, 64) and np.isfinite(e.saliency).all() and e.saliency.max() == 1.0, method
        assert (e.layer is not None) == fv.get_method(method).uses_layer
    assert_same_state(before, model_state(net))


# ---------------------------------------------------------------- checks and refusals
@pytest.mark.parametrize("method, params, message", [
    ("integrated_gradients", {"steps": 0}, "steps=0 must be at least 1"),
    ("integrated_gradients", {"baseline": "white"}, r"baseline='white' is not one of \['black', 'mean'\]"),
    ("smoothgrad", {"noise": 0}, r"noise=0 must be a fraction of the input's range in \(0, 1\]"),
    ("smoothgrad", {"noise": 1.5}, r"noise=1.5 must be a fraction"),
    ("smoothgrad", {"samples": 0}, "samples=0 must be at least 1"),
    ("occlusion", {"window": 0}, "window=0 must be at least 1"),
    ("occlusion", {"window": 4, "stride": 5}, "stride=5 must be at most window=4"),
    ("occlusion", {"window": 9, "stride": 2}, "window=9 is larger than the 8 x 8 input; pass a window of at most 8"),
])
def test_bad_parameters_are_named(method, params, message):
    with pytest.raises(ValueError, match=message):
        fv.explain(_tiny(), torch.rand(3, 8, 8), method=method, **params)


def test_the_new_defaults_are_in_the_registry():
    d = {n: fv.get_method(n).defaults() for n in NEW}
    assert {k: d["integrated_gradients"][k] for k in ("steps", "baseline")} == {"steps": 32, "baseline": "black"}
    assert {k: d["smoothgrad"][k] for k in ("samples", "noise", "seed")} == {"samples": 16, "noise": 0.15, "seed": 0}
    assert {k: d["occlusion"][k] for k in ("window", "stride", "baseline")} == {"window": 32, "stride": 16, "baseline": "mean"}
    for n in ("gradcam_pp", "xgradcam", "layercam", "scorecam", "eigencam"):
        assert d[n]["sigma"] == 0.0 and fv.get_method(n).uses_layer
    for n in ("saliency", "integrated_gradients", "smoothgrad", "occlusion"):
        assert d[n]["sigma"] is None and not fv.get_method(n).uses_layer


def test_a_model_with_its_own_preprocessing_gets_its_own_black():
    """The baseline comes from the bundle's own preprocessing (here: a transform)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    bundle = fv.load_model(net, input_size=8, class_names=["a", "b"])
    bundle.transform = lambda images: images * 2 - 1  # black is -1 here
    seen = []
    handle = net[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    try:
        fv.explain(bundle, torch.ones(3, 8, 8), method="occlusion", baseline="black", window=8, stride=8)
    finally:
        handle.remove()
    assert torch.all(seen[-1] == -1)  # the occluded copy: the whole window black
