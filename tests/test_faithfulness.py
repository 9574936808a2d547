"""Deletion / insertion curves and the randomization sanity check: exact on a tiny hand-set
model, the model-state guarantee, and the known outcome on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyNet, assert_same_state, model_state

from fastloc_viz import ModelBundle
from fastloc_viz.evaluation.faithfulness import (
    BLUR_KERNEL,
    BLUR_SIGMA,
    baseline_image,
    deletion_curve,
    faithfulness,
)
from fastloc_viz.evaluation.sanity import (
    map_similarity,
    randomization_groups,
    randomized_copies,
    sanity_check,
)


def _bundle(act: str = "relu", dtype=torch.float64) -> ModelBundle:
    model = TinyNet(act).to(dtype).eval()
    return ModelBundle(model, class_names=[f"c{i}" for i in range(4)], input_size=(8, 8), name="tiny")


def _image_and_map(seed: int = 3):
    rng = np.random.default_rng(seed)
    image = rng.random((8, 8, 3)).astype(np.float32).astype(np.float64)  # images are read as float32
    sal = rng.integers(0, 6, (8, 8)).astype(float)  # many ties: the tie rule is tested too
    return image, sal


def _reference_curve(bundle, image, sal, target, steps, base, kind):
    """Pixel by pixel in Python, one forward per point."""
    h, w = sal.shape
    ranked = sorted(range(h * w), key=lambda i: (-sal.flat[i], i))  # ties: row-major order
    x0 = torch.tensor(image.transpose(2, 0, 1), dtype=torch.float64)
    probs, xs = [], []
    for k in range(steps + 1):
        n = round(k * h * w / steps)
        xs.append(n / (h * w))
        x = (x0.clone() if kind == "deletion" else base.clone())
        for i in ranked[:n]:
            r, c = divmod(i, w)
            x[:, r, c] = base[:, r, c] if kind == "deletion" else x0[:, r, c]
        with torch.no_grad():
            logits = bundle.model(bundle.preprocess(x[None]))
        probs.append(float(torch.softmax(logits, 1)[0, target]))
    area = sum((probs[k] + probs[k + 1]) / 2 * (xs[k + 1] - xs[k]) for k in range(steps))
    return np.array(probs), area


@pytest.mark.parametrize("steps", [1, 5, 8, 64])
def test_curves_equal_a_pixel_by_pixel_reference(steps):
    bundle = _bundle()
    image, sal = _image_and_map()
    x = torch.tensor(image.transpose(2, 0, 1))
    curves = faithfulness(bundle, image, sal, target=2, steps=steps, batch_size=3)
    for kind, base_name in (("deletion", "mean"), ("insertion", "blur")):
        base = baseline_image(bundle, x, base_name)
        probs, area = _reference_curve(bundle, image, sal, 2, steps, base, kind)
        np.testing.assert_allclose(curves[kind].probs, probs, rtol=0, atol=1e-12)
        assert curves[kind].auc == pytest.approx(area, abs=1e-12)
        assert 0.0 <= curves[kind].auc <= 1.0
        np.testing.assert_allclose(curves[kind].fractions, np.rint(np.arange(steps + 1) * 64 / steps) / 64)


def test_baselines_by_hand():
    bundle = _bundle()
    image, _ = _image_and_map()
    x = torch.tensor(image.transpose(2, 0, 1))
    mean = torch.tensor(bundle.mean, dtype=x.dtype)[:, None, None].expand_as(x)
    assert torch.equal(baseline_image(bundle, x, "mean"), mean)
    # the blur: an 11-tap Gaussian, sigma 5, separable, reflect padding
    t = np.arange(BLUR_KERNEL) - BLUR_KERNEL // 2
    k = np.exp(-(t**2) / (2 * BLUR_SIGMA**2))
    k /= k.sum()
    pad = np.pad(image, ((5, 5), (5, 5), (0, 0)), mode="reflect")
    ref = np.zeros_like(image)
    for r in range(8):
        for c in range(8):
            ref[r, c] = np.einsum("ijc,i,j->c", pad[r : r + 11, c : c + 11], k, k)
    np.testing.assert_allclose(baseline_image(bundle, x, "blur").numpy().transpose(1, 2, 0), ref, atol=1e-6)


def test_target_none_is_the_top1_and_deletion_alone_matches():
    bundle = _bundle()
    image, sal = _image_and_map()
    both = faithfulness(bundle, image, sal, steps=4)
    with torch.no_grad():
        top = int(bundle.model(bundle.preprocess(torch.tensor(image.transpose(2, 0, 1))[None])).argmax())
    assert both["deletion"].target == top == both["insertion"].target
    alone = deletion_curve(bundle, image, sal, steps=4)
    np.testing.assert_allclose(alone.probs, both["deletion"].probs, atol=1e-12)
    # the unchanged image: first point of deletion, last of insertion
    assert both["deletion"].probs[0] == both["insertion"].probs[-1]


class _FailAfter(torch.nn.Module):
    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.left = inner, calls

    def forward(self, x):
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("boom")
        return self.inner(x)


@pytest.mark.parametrize("act", ["relu_inplace", "relu6"])
def test_faithfulness_leaves_the_model_as_it_was(act):
    bundle = _bundle(act, torch.float32)
    bundle.model.train()
    before = model_state(bundle.model)
    image, sal = _image_and_map()
    faithfulness(bundle, image, sal, steps=4, batch_size=2)
    assert_same_state(before, model_state(bundle.model))
    failing = ModelBundle(_FailAfter(bundle.model, 2), class_names=bundle.class_names, input_size=(8, 8))
    with pytest.raises(RuntimeError, match="boom"):
        faithfulness(failing, image, sal, steps=8, batch_size=2)
    assert_same_state(before, model_state(bundle.model))


# ----------------------------------------------------------------------------- sanity
def test_groups_top_down_and_cascading():
    model = TinyNet("relu").eval()
    groups = randomization_groups(model)
    assert [g for g, _ in groups] == ["fc", "conv3", "conv2", "conv1"]
    assert len(randomization_groups(model, "modules")) == 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    for depth, twin in randomized_copies(model, groups, [1, 3]):
        changed = [n for n, v in twin.state_dict().items() if not torch.equal(v, before[n])]
        seen.append(sorted({n.split(".")[0] for n in changed}))
        assert twin is not model
    assert seen == [["fc"], ["conv2", "conv3", "fc"]]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_map_similarity_identity_and_constant():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    s = map_similarity(a, a)
    assert s["spearman"] == pytest.approx(1) and s["ssim"] == pytest.approx(1) and s["hog"] == pytest.approx(1)
    assert np.isnan(map_similarity(a, np.zeros_like(a))["spearman"])  # no ranks: undefined, not 0
    assert map_similarity(a, 1 - a)["spearman"] == pytest.approx(-1)


def test_sanity_check_leaves_model_and_rng_as_they_were(monkeypatch):
    bundle = _bundle("relu_inplace", torch.float32)
    before = model_state(bundle.model)
    rng = torch.random.get_rng_state()
    image, _ = _image_and_map()
    out = sanity_check(bundle, image, methods=["gradcam", "guided_backprop"], layer="conv3", depths=[1, 2])
    assert out["gradcam"].depths == (1, 2, 4) and out["gradcam"].groups == ("fc", "conv3", "conv1")
    assert out["guided_backprop"].maps.shape == (3, 8, 8)
    assert out["guided_backprop"].similarity == out["guided_backprop"].spearman[-1]
    assert_same_state(before, model_state(bundle.model))
    assert torch.equal(rng, torch.random.get_rng_state())

    import fastloc_viz.methods.explain as ex

    real, calls = ex.explain, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom at depth")
        return real(*a, **k)

    monkeypatch.setattr(ex, "explain", flaky)
    with pytest.raises(RuntimeError, match="boom at depth"):
        sanity_check(bundle, image, methods=["gradcam"], layer="conv3")
    assert_same_state(before, model_state(bundle.model))
    assert torch.equal(rng, torch.random.get_rng_state())


@pytest.mark.slow
def test_guided_backprop_survives_randomization_gradcam_does_not(lite0, shared_data):
    """Adebayo et al.'s outcome on real photographs: guided backprop's map stays close to the
    trained model's when every layer is random; Grad-CAM's does not."""
    from fastloc_viz.imaging.dataset import LocalizationDataset

    data = LocalizationDataset(shared_data, limit=3)
    sims = {"gradcam": [], "guided_backprop": []}
    for q in data:
        out = sanity_check(lite0, q.load_image(), methods=list(sims), target=q.label, depths=[])
        for m in sims:
            sims[m].append(out[m].similarity)
    guided, gradcam = np.array(sims["guided_backprop"]), np.array(sims["gradcam"])
    assert np.isfinite(guided).all(), sims
    # Grad-CAM's map of a fully random model is often constant (NaN: no rank correlation)
    rest = gradcam[np.isfinite(gradcam)]
    assert guided.mean() > (rest.mean() if rest.size else 0.0) + 0.1, sims
