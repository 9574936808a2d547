"""Per-neuron information: activation maps, ablation, the neuron atlas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, assert_same_state, model_state
from torch import nn
from torch.testing import assert_close

import fastloc_viz as fv
from fastloc_viz.engine.activations import mean_pairwise_correlation, pairwise_correlations
from fastloc_viz.neurons.ablation import ablate_channels, random_control


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


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_ablation_is_one_batched_forward_and_no_backward(relu_net_bundle, monkeypatch, shared_prefix):
    bundle = relu_net_bundle
    e = fv.explain(bundle, _img(2), k=4)
    calls = []
    h = bundle.model.register_forward_hook(
        lambda m, i, o: calls.append((i[0].shape[0], o.shape[0], o.requires_grad, o.grad_fn))
    )

    def no_backward(*a, **k):
        raise AssertionError("ablate ran a backward pass")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    try:
        a = fv.ablate(bundle, e, shared_prefix=shared_prefix)
    finally:
        h.remove()
    # one forward pass, 2k + 3 copies out, no graph; with the shared prefix the layers below
    # the probe see the one image
    assert calls == [(1 if shared_prefix else 11, 2 * 4 + 3, False, None)]
    assert len(a.channel_off) == len(a.unit_off) == 4


class _SkipCat(nn.Module):
    """A tensor from below the probe is concatenated above it: no broadcasting there."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(10, 3)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = self.conv2(a)
        return self.fc(torch.cat([b, a], dim=1).mean(dim=(2, 3)))


def test_ablation_falls_back_to_full_copies_when_the_prefix_cannot_be_shared():
    model = _SkipCat().eval()
    bundle = fv.load_model(model, input_size=8, layer="conv2", class_names=list("abc"))
    e = fv.explain(bundle, _img(7), k=2)
    calls = []
    h = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    shared = fv.ablate(bundle, e)
    h.remove()
    assert calls == [1, 7]  # the shared-prefix try raised in torch.cat; then 2k + 3 full copies
    assert shared == fv.ablate(bundle, e, shared_prefix=False)
    calls.clear()
    h = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    fv.ablate(bundle, e)
    h.remove()
    assert calls == [7]  # not tried again on this model
    assert shared.channel_off[0].logit != shared.base.logit


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


# --- the neuron atlas --------------------------------------------------------------------


def _images(n=7, seed=0):
    g = np.random.default_rng(seed)
    return [g.random((8, 8, 3)).astype(np.float32) for _ in range(n)]


def _brute_force(model, bundle, images, top, sign=1):
    """Per channel: every image's strongest unit (``sign=-1``: most negative; the first in
    row-major order on ties), images sorted by that activation (strongest first, earlier
    image first on ties), the first ``top``."""
    rows = []
    with torch.no_grad():
        for im in images:
            x = bundle.preprocess(torch.from_numpy(im).permute(2, 0, 1)[None])
            z = model.conv3(model._act(2, model.conv2(model._act(1, model.conv1(x)))))[0].numpy()
            rows.append(z)
    c, h, w = rows[0].shape
    want = {}
    for ch in range(c):
        per = []
        for i, z in enumerate(rows):
            flat = z[ch].ravel()
            j = int(np.argmax(flat) if sign > 0 else np.argmin(flat))
            per.append((-sign * float(flat[j]), i, j // w, j % w, float(flat[j])))
        per.sort(key=lambda t: (t[0], t[1]))
        want[ch] = [(i, y, x, v) for _, i, y, x, v in per[:top]]
    return want


def test_atlas_top_units_equal_a_brute_force_scan():
    model = TinyNet("relu").eval()
    bundle = _bundle(model)
    images = _images(7)
    atlas = fv.NeuronAtlas.build(bundle, images, top=3, batch_size=2, progress=False, patch_px=8)
    assert atlas.layer == "conv3" and atlas.layer_shape == (8, 4, 4) and atlas.model == "TinyNet"
    for sign in (1, -1):
        want = _brute_force(model, bundle, images, 3, sign)
        for ch in range(8):
            got = atlas.top(ch, sign=sign)
            assert [(u.index, u.y, u.x) for u in got] == [w[:3] for w in want[ch]]
            # (the scan batches 2 images, the brute force 1: float32 may differ in the last bits)
            assert_close([u.activation for u in got], [w[3] for w in want[ch]], rtol=1e-5, atol=1e-5)
            assert [u.image for u in got] == [f"#{w[0]}" for w in want[ch]]
            assert [u.rank for u in got] == [1, 2, 3] and all(u.labels == () for u in got)
    positive_only = fv.NeuronAtlas.build(bundle, images, top=3, batch_size=3, progress=False, patch_px=8, negative=False)
    assert positive_only.signs == (1,) and positive_only.top(4) == atlas.top(4)
    with pytest.raises(ValueError, match="sign"):
        positive_only.top(4, sign=-1)
    assert len(atlas.top(0, 2)) == 2
    # fewer images than top: the tables are padded, top() stops early
    small = fv.NeuronAtlas.build(bundle, images[:2], top=3, progress=False, patch_px=8)
    assert len(small.top(0)) == 2 and small.image_index[0, 0, 2] == -1
    with pytest.raises(IndexError):
        atlas.top(8)


def test_atlas_patches_are_the_units_windows():
    model = TinyNet("relu").eval()
    bundle = _bundle(model)
    colours = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.2, 0.3, 0.9)]
    images = [np.broadcast_to(np.array(c, dtype=np.float32), (8, 8, 3)).copy() for c in colours]
    atlas = fv.NeuronAtlas.build(bundle, images, top=3, progress=False, patch_cells=1, patch_px=16)
    for ch in range(8):
        for sign in (1, -1):
            for u, p in zip(atlas.top(ch, sign=sign), atlas.patches(ch, sign=sign)):
                assert p.shape == (16, 16, 3) and p.dtype == np.uint8
                assert np.abs(p.reshape(-1, 3).mean(0) / 255 - np.array(colours[u.index])).max() < 0.05
    assert atlas.strip(0, 3).shape == (16, 3 * 16 + 2 * 2, 3)


def test_atlas_save_load_round_trip(tmp_path):
    bundle = _bundle(TinyNet("relu").eval())
    atlas = fv.NeuronAtlas.build(bundle, _images(5), top=2, progress=False, patch_px=8)
    path = atlas.save(tmp_path / "a.npz")
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: no pickled objects
        assert all(z[k].dtype != object for k in z.files)
    back = fv.NeuronAtlas.load(path)
    assert (back.model, back.layer, back.layer_shape, back.images) == (atlas.model, atlas.layer, atlas.layer_shape, atlas.images)
    assert back.signs == (1, -1)
    for ch in range(8):
        for sign in (1, -1):
            assert back.top(ch, sign=sign) == atlas.top(ch, sign=sign)
            for a, b in zip(back.patches(ch, sign=sign), atlas.patches(ch, sign=sign)):
                assert np.array_equal(a, b)
    back.check(bundle, "conv3")
    with pytest.raises(ValueError, match="built for model 'TinyNet' at layer 'conv3'"):
        back.check(bundle, "conv2")
    (tmp_path / "bad.npz").write_bytes(b"not an atlas")
    with pytest.raises(Exception):
        fv.NeuronAtlas.load(tmp_path / "bad.npz")


def test_atlas_resumes_after_an_interruption(tmp_path):
    model = TinyNet("relu").eval()
    bundle = _bundle(model)
    images = _images(9, seed=3)
    clean = fv.NeuronAtlas.build(bundle, images, top=3, batch_size=2, progress=False, patch_px=8)
    ck = tmp_path / "a.partial"
    calls = {"n": 0}

    def interrupt(_m, _i):
        calls["n"] += 1
        if calls["n"] == 4:  # 3 batches done (6 images), checkpointed after each
            raise KeyboardInterrupt

    h = model.register_forward_pre_hook(interrupt)
    before = model_state(model)
    with pytest.raises(KeyboardInterrupt):
        fv.NeuronAtlas.build(bundle, images, top=3, batch_size=2, checkpoint=ck, checkpoint_every=1, progress=False)
    assert_same_state(before, model_state(model))
    h.remove()
    assert ck.exists()
    counted = []
    h = model.register_forward_pre_hook(lambda _m, i: counted.append(i[0].shape[0]))
    resumed = fv.NeuronAtlas.build(bundle, images, top=3, batch_size=2, checkpoint=ck, checkpoint_every=1, progress=False)
    h.remove()
    assert counted == [2, 1]  # images 6-7 and 8 only
    assert not ck.exists()
    assert np.array_equal(resumed.image_index, clean.image_index)
    assert np.array_equal(resumed.activation, clean.activation)
    assert np.array_equal(resumed.y, clean.y) and np.array_equal(resumed.x, clean.x)
    # a checkpoint of another build (other images) is not used
    fv.NeuronAtlas.build(bundle, images[:5], top=3, batch_size=2, checkpoint=ck, checkpoint_every=1, progress=False)
    other = fv.NeuronAtlas.build(bundle, images, top=3, batch_size=2, checkpoint=ck, progress=False)
    assert np.array_equal(other.image_index, clean.image_index)


def test_atlas_sources_folder_and_csv(tmp_path):
    from PIL import Image

    bundle = _bundle(TinyNet("relu").eval())
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    arrays = _images(3, seed=5)
    names = ["a.png", "sub/b.png", "sub/c.PNG"]
    for name, arr in zip(names, arrays):
        Image.fromarray((arr * 255).astype(np.uint8)).save(tmp_path / "imgs" / name)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    folder = fv.NeuronAtlas.build(bundle, tmp_path / "imgs", top=2, progress=False, patch_px=8)
    assert folder.images == names
    csv = tmp_path / "imgs" / "annotations.csv"
    csv.write_text(
        "image,label,wnid,width,height,orig_width,orig_height,boxes\n"
        "a.png,1,n1,8,8,8,8,0 0 4 4\nsub/b.png,3,n3,8,8,8,8,0 0 4 4\nsub/c.PNG,0,n0,8,8,8,8,1 1 2 2\n"
        "a.png,2,n2,8,8,8,8,0 0 8 8\n"
    )
    data = fv.NeuronAtlas.build(bundle, tmp_path / "imgs", top=3, progress=False, patch_px=8)
    assert data.images == names and data.labels == [[1, 2], [3], [0]]
    assert np.array_equal(data.image_index, fv.NeuronAtlas.build(bundle, csv, top=3, progress=False).image_index)
    by_image = {u.image: u.labels for u in data.top(0)}
    assert by_image == {"a.png": ("b", "c"), "sub/b.png": ("d",), "sub/c.PNG": ("a",)}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        fv.NeuronAtlas.build(bundle, tmp_path / "empty", top=1)


def test_cli_atlas_builds_and_saves(tmp_path, capsys, shared_data):
    from fastloc_viz.cli import main

    out = tmp_path / "atlas.npz"
    assert main(["atlas", str(_few_images(shared_data, tmp_path, 4)), "--out", str(out), "--top", "2"]) == 0
    assert "atlas of efficientnet_lite0 at _blocks.15: 320 channels x top 2 over 4 images" in capsys.readouterr().out
    atlas = fv.NeuronAtlas.load(out)
    assert atlas.layer == "_blocks.15" and len(atlas.top(0)) == 2
    assert not (tmp_path / "atlas.npz.partial").exists()


@pytest.mark.slow
def test_torchrun_atlas_merges_to_the_single_process_atlas(tmp_path, shared_data):
    """``fastloc-viz atlas`` over 2 gloo ranks (5 images, batches of 2: rank 0 scans images 0, 1
    and 4, rank 1 images 2 and 3) saves the atlas of one process, byte for byte in every table
    and patch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = _few_images(shared_data, tmp_path, 5)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = ["-m", "fastloc_viz.cli", "atlas", str(src), "--top", "3", "--batch-size", "2"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.npz")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                          "--out", str(tmp_path / "two.npz")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("atlas of efficientnet_lite0") == 1  # rank 0 saves and reports
    a, b = fv.NeuronAtlas.load(tmp_path / "one.npz"), fv.NeuronAtlas.load(tmp_path / "two.npz")
    assert a.images == b.images and len(a.images) == 5
    assert set(a.image_index.ravel().tolist()) == {0, 1, 2, 3, 4}  # both ranks' images are kept
    for name in ("image_index", "y", "x", "_patch_offsets", "_patch_bytes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.activation, b.activation, equal_nan=True)
    assert not list(tmp_path.glob("*.partial*"))


def _few_images(shared_data, tmp_path, n):
    import shutil

    d = tmp_path / "few"
    d.mkdir()
    for p in sorted((shared_data / "images").iterdir())[:n]:
        shutil.copy(p, d / p.name)  # a scratch copy in pytest's tmp dir
    return d


# --- the report's neuron cards -----------------------------------------------------------


def test_report_shows_activation_maps_drops_and_atlas_strips(tmp_path):
    from fastloc_viz.views.report import render_report, write_report

    model = TinyNet("relu").eval()
    bundle = _bundle(model)
    e = fv.explain(bundle, _img(6), k=3)
    atlas = fv.NeuronAtlas.build(bundle, _images(4), top=2, progress=False, patch_px=8)
    a = fv.ablate(bundle, e)
    text = render_report({"fastloc": e}, atlas=atlas, ablation=a)
    assert text.count("class='ncard'") == 3 and "where channel fires" in text
    assert text.count("class='atlas-strip'") == 3
    for n, d in zip(e.neurons, a.channel_drops):
        assert f"data-drop='{d:.6f}'" in text
        sign = -1 if n.activation < 0 else 1
        assert f"data-channel='{n.channel}' data-sign='{sign}'" in text
    assert "guided-backprop maps correlate" in text
    plain = render_report({"fastloc": e})
    assert "class='ncard'" in plain and "class='atlas-strip'" not in plain and "data-drop" not in plain
    other = fv.NeuronAtlas.build(bundle, _images(2), layer="conv2", top=1, progress=False, patch_px=8)
    with pytest.raises(ValueError, match="atlas is for layer 'conv2'"):
        write_report(tmp_path / "r.html", {"fastloc": e}, atlas=other)
    assert not (tmp_path / "r.html").exists()
