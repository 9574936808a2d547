"""Per-neuron information: activation maps, ablation, the neuron atlas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, assert_same_state, model_state
from torch.testing import assert_close

import fastloc_viz as fv
from fastloc_viz.ablation import ablate_channels, random_control
from fastloc_viz.neuron_views import mean_pairwise_correlation, pairwise_correlations


def _bundle(model, dtype=torch.float32):
    return fv.load_model(model.to(dtype), input_size=8, layer="conv3", class_names=list("abcd"))


def _img(seed=0):
    return torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(seed))


# --- activation maps ---------------------------------------------------------------------


def test_activation_maps_are_the_kept_channels_upsampled(tiny):
    bundle = _bundle(tiny)
    img = _img()
    e = fv.explain(bundle, img, k=3)
    with torch.no_grad():  # the probe layer's output by hand
        x = bundle.preprocess(img[None])
        acts = tiny.conv3(tiny._act(2, tiny.conv2(tiny._act(1, tiny.conv1(x)))))[0]
    assert e.activation_maps.shape == (3, 8, 8) and e.activation_maps.dtype == np.float32
    for n, amap in zip(e.neurons, e.activation_maps):
        assert_close(float(acts[n.channel, n.y, n.x]), n.activation)
        ch = acts[n.channel] * (1 if n.activation >= 0 else -1)
        ref = F.interpolate(ch[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
        ref = ref / ref.max() if ref.max() > 0 else ref
        assert_close(torch.from_numpy(amap), ref)
        assert amap.min() >= 0 and amap.max() <= 1


def test_activation_maps_follow_rescoring_order_and_recombine(relu_net_bundle):
    img = _img(3)
    e = fv.explain(relu_net_bundle, img, method="fastloc_rescored", k=2, kmax=4)
    full = fv.explain(relu_net_bundle, img, method="fastloc", k=4)
    by_channel = {n.channel: m for n, m in zip(full.neurons, full.activation_maps)}
    for n, m in zip(e.neurons, e.activation_maps):
        assert_close(m, by_channel[n.channel])
    r = fv.recombine(full, [2, 3])
    assert r.activation_maps is full.activation_maps
    assert fv.explain(relu_net_bundle, img, method="gradcam").activation_maps is None


def test_pairwise_correlation():
    a = np.random.default_rng(0).random((3, 5, 5))
    maps = np.stack([a[0], 2 * a[0] + 1, a[1], np.zeros((5, 5))])
    c = pairwise_correlations(maps)
    assert_close(c[0, 1], 1.0)
    assert_close(c[0, 2], float(np.corrcoef(a[0].ravel(), a[1].ravel())[0, 1]))
    assert np.isnan(c[3]).all()
    want = np.mean([c[0, 1], c[0, 2], c[1, 2]])
    assert_close(mean_pairwise_correlation(maps), float(want))
    assert np.isnan(mean_pairwise_correlation(maps[:1]))


# --- ablation ----------------------------------------------------------------------------


@pytest.fixture
def relu_net_bundle():
    return _bundle(TinyNet("relu").eval())


def _reference(model, layer: str, x, target, zeros):
    """Straightforward: a forward hook that zeroes by index assignment (``zeros[r]`` edits
    row ``r`` of the probe layer's output), one full forward pass of ``len(zeros)`` copies
    of ``x``; returns the target's (probabilities, logits)."""
    mod = dict(model.named_modules())[layer]

    def hook(_m, _i, out):
        out = out.clone()
        for r, zero in enumerate(zeros):
            zero(out[r])
        return out

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x.expand(len(zeros), *x.shape[1:]).contiguous())
    finally:
        h.remove()
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.softmax(logits, 1)[:, target].tolist(), logits[:, target].tolist()


def _check_against_reference(bundle, e, exact_single: bool):
    a = fv.ablate(bundle, e)
    x = bundle.preprocess(torch.from_numpy(e.image).permute(2, 0, 1)[None])
    chans = [n.channel for n in e.neurons]

    def keep_only(o):
        mask = torch.ones(o.shape[0], dtype=torch.bool)
        mask[chans] = False
        o[mask] = 0

    cases = [(a.base, lambda o: None)]
    cases += [(co, lambda o, c=n.channel: o[c].zero_()) for n, co in zip(e.neurons, a.channel_off)]
    cases += [(uo, lambda o, n=n: o[n.channel, n.y, n.x].zero_()) for n, uo in zip(e.neurons, a.unit_off)]
    def all_off(o):
        o[chans] = 0  # (o[chans] with a list is a copy: assign, don't zero_())

    cases += [(a.all_off, all_off), (a.only_kept, keep_only)]
    outcomes = [c[0] for c in cases]
    # 1. the same copies in one batch: bit for bit
    probs, logits = _reference(bundle.model, e.layer, x, e.target, [c[1] for c in cases])
    assert [o.logit for o in outcomes] == logits
    assert [o.probability for o in outcomes] == probs
    # 2. each case alone (batch of one): convolutions and reductions may round the last bits
    # differently at another batch size
    for outcome, (_, zero) in zip(outcomes, cases):
        (p,), (logit,) = _reference(bundle.model, e.layer, x, e.target, [zero])
        if exact_single:
            assert outcome.logit == pytest.approx(logit, rel=1e-12, abs=1e-12)
            assert outcome.probability == pytest.approx(p, rel=1e-10, abs=0)
        else:
            assert outcome.logit == pytest.approx(logit, rel=1e-5, abs=1e-5)
            assert outcome.probability == pytest.approx(p, rel=1e-4, abs=1e-7)
    return a


@pytest.mark.parametrize("act", ["relu", "relu_inplace", "functional"])
def test_ablation_equals_a_forward_hook_reference(act):
    bundle = _bundle(TinyNet(act).eval(), torch.float64)
    e = fv.explain(bundle, _img(1), k=3, target="b")
    a = _check_against_reference(bundle, e, exact_single=True)
    assert a.ranks == (1, 2, 3) and a.channels == tuple(n.channel for n in e.neurons)
    assert a.base.probability == pytest.approx(e.top5[[p.index for p in e.top5].index(1)].probability)
    assert a.channel_drops[0] == pytest.approx(a.base.probability - a.channel_off[0].probability)
    assert a.drop(2) == a.channel_drops[1]
    with pytest.raises(ValueError, match="rank 9"):
        a.drop(9)


def test_ablation_equals_a_forward_hook_reference_on_lite0(lite0):
    e = fv.explain(lite0, fv.sample_image("rocket"))
    a = _check_against_reference(lite0, e, exact_single=False)
    assert a.base.top.name == e.top5[0].name
    assert a.base.probability == pytest.approx(e.top5[0].probability, rel=1e-4)
    assert a.all_off.probability < a.base.probability  # the kept channels carry the class


def test_ablation_is_one_batched_forward_and_no_backward(relu_net_bundle, monkeypatch):
    bundle = relu_net_bundle
    e = fv.explain(bundle, _img(2), k=4)
    calls = []
    h = bundle.model.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0], o.requires_grad, o.grad_fn)))

    def no_backward(*a, **k):
        raise AssertionError("ablate ran a backward pass")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    try:
        a = fv.ablate(bundle, e)
    finally:
        h.remove()
    assert calls == [(2 * 4 + 3, False, None)]  # one forward of the 2k + 3 copies, no graph
    assert len(a.channel_off) == len(a.unit_off) == 4


def test_ablate_channels_and_random_control(relu_net_bundle):
    bundle = relu_net_bundle
    e = fv.explain(bundle, _img(4), k=2)
    a = fv.ablate(bundle, e)
    outs = ablate_channels(bundle, e, [(), [e.neurons[0].channel], [n.channel for n in e.neurons]], batch_size=2)
    close = dict(rtol=1e-5, atol=1e-5)  # other batch sizes: the last bits may differ
    assert_close(outs[0].logit, a.base.logit, **close)
    assert_close(outs[1].logit, a.channel_off[0].logit, **close)
    assert_close(outs[2].logit, a.all_off.logit, **close)
    rc = random_control(bundle, e, draws=30, seed=1, batch_size=7)
    kept = {n.channel for n in e.neurons}
    assert rc.channels.shape == (30, 2) and not kept & set(rc.channels.ravel().tolist())
    for row, p in zip(rc.channels[:3], rc.probability[:3]):
        assert_close(ablate_channels(bundle, e, [row])[0].probability, float(p), **close)
    assert 0 < rc.fraction_at_least(-1.0) <= 1 and rc.fraction_at_least(2.0) == 1 / 31
    with pytest.raises(ValueError, match="k=9"):
        random_control(bundle, e, k=9)


@pytest.mark.parametrize("case", ["normal", "raising"])
def test_ablation_leaves_the_model_as_it_was(case):
    model = TinyNet("relu_inplace")
    bundle = _bundle(model)
    e = fv.explain(bundle, _img(5), k=2)
    model.train()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = model_state(model)
    if case == "raising":
        def boom(*_a):
            raise RuntimeError("boom")

        model.fc.register_forward_pre_hook(boom)
        before = model_state(model)
        with pytest.raises(RuntimeError, match="boom"):
            fv.ablate(bundle, e)
    else:
        fv.ablate(bundle, e)
    assert_same_state(before, model_state(model))


def test_ablation_needs_neurons(relu_net_bundle):
    e = fv.explain(relu_net_bundle, _img(), method="gradcam")
    with pytest.raises(ValueError, match="no neurons|keeps no neurons"):
        fv.ablate(relu_net_bundle, e)
