"""The CAM family (issue 21): Grad-CAM++, XGrad-CAM, LayerCAM, Score-CAM, Eigen-CAM.

Exact numbers on hand-set tensors and a hand-set ViT; agreement with torch-cam (and
pytorch-grad-cam where torch-cam has no such map or computes another one) on the real
pretrained EfficientNet-Lite0 at the layer's resolution; the same on a timm ViT's token
layer; Score-CAM's masked forwards batched without changing the map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet

import fastloc_viz as fv
from fastloc_viz.engine import cams
from fastloc_viz.imaging.batch import load_batch_sizes
from fastloc_viz.model.state import preserved

torchcam = pytest.importorskip("torchcam.methods")
gradcam_lib = pytest.importorskip("pytorch_grad_cam")

CAM_METHODS = ("gradcam_pp", "xgradcam", "layercam", "scorecam", "eigencam")


def corr(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------- the rules, by hand
def _longhand(rule: str, A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """One image's map, written out channel by channel and position by position."""
    c, h, w = A.shape
    out = np.zeros((h, w))
    for k in range(c):
        a, g = A[k], G[k]
        if rule == "gradcam":
            weight = g.mean()
        elif rule == "gradcam_pp":
            weight = 0.0
            for y in range(h):
                for x in range(w):
                    if g[y, x] != 0:
                        alpha = g[y, x] ** 2 / (2 * g[y, x] ** 2 + a.sum() * g[y, x] ** 3 + cams.EPS)
                        weight += alpha * max(g[y, x], 0.0)
        elif rule == "xgradcam":
            weight = (g * a).sum() / (a.sum() + cams.EPS)
        if rule == "layercam":
            out += np.maximum(g, 0) * a
        else:
            out += weight * a
    return np.maximum(out, 0)


@pytest.mark.parametrize("rule", cams.GRADIENT_RULES)
def test_each_gradient_rule_equals_its_longhand(rule):
    g = torch.Generator().manual_seed(3)
    A = torch.rand(2, 4, 3, 5, generator=g, dtype=torch.float64) * 2
    G = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    G[0, 1, 0, 0] = 0.0  # a zero gradient: Grad-CAM++'s alpha is 0 there
    got = cams.weigh(rule, A, G).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], _longhand(rule, A[i].numpy(), G[i].numpy()), rtol=1e-10, atol=1e-12)


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match=r"rule='gradcam\+\+' is not one of \['gradcam', 'gradcam_pp'"):
        cams.weigh("gradcam++", torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


def test_eigen_cam_by_hand():
    """Rank-one activations: the first principal direction is the channel pattern, the
    projection the (centred) spatial pattern, signed so its larger magnitude is positive."""
    s = torch.tensor([[0.0, 1.0], [3.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    acts = (v[:, None, None] * s)[None]  # 1 x 3 x 2 x 2

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Identity()

        def forward(self, x):
            return self.layer(acts.expand(len(x), -1, -1, -1)).mean(dim=(2, 3))

    net = Net()
    with preserved(net):
        got = cams.eigen_cam(net, torch.zeros(1, 3, 2, 2, dtype=torch.float64), net.layer, name="layer")
    centred = (s - s.mean()) * v.norm()
    want = (centred if centred.max() >= -centred.min() else -centred).clamp(min=0)
    assert torch.allclose(got[0], want, atol=1e-12)
    assert got[0, 1, 0] == got.max()  # the 3.0 position


# ---------------------------------------------------------------- torch-cam on Lite0
@pytest.fixture(scope="module")
def photos(lite0):
    """Two photos (scikit-image's cat and coffee), their top-1 classes and the layer."""
    images, _, _ = load_batch_sizes([fv.sample_image(n) for n in ("chelsea", "coffee")], lite0.input_size)
    x = lite0.preprocess(images)
    with torch.no_grad():
        t = lite0.model(x).argmax(1)
    name = lite0.default_layer
    return x, t, name, dict(lite0.model.named_modules())[name]


def _ours(lite0, x, t, name, layer, method: str, **kw) -> torch.Tensor:
    with preserved(lite0.model):
        if method == "scorecam":
            return cams.score_cam(lite0.model, x, layer, t, name=name, **kw)
        if method == "eigencam":
            return cams.eigen_cam(lite0.model, x, layer, name=name)
        return cams.gradient_cam(lite0.model, x, layer, t, method, name=name)


@pytest.mark.slow
@pytest.mark.parametrize("method, reference", [("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")])
def test_gradient_cams_match_torchcam_on_lite0(lite0, photos, method, reference):
    x, t, name, layer = photos
    ours = _ours(lite0, x, t, name, layer, method)
    with getattr(torchcam, reference)(lite0.model, name) as extractor:
        scores = lite0.model(x)
        theirs = extractor(class_idx=t.tolist(), scores=scores)[0].detach()
    assert ours.shape == theirs.shape == (2, 7, 7)
    for i in range(2):
        assert corr(ours[i], theirs[i]) >= 0.99, (method, i, corr(ours[i], theirs[i]))


@pytest.mark.slow
def test_gradcam_pp_matches_pytorch_grad_cam_on_lite0(lite0, photos):
    """Grad-CAM++ as the paper's Eq. 19 (pytorch-grad-cam's). torch-cam 0.5's GradCAMpp
    divides a copy (``alpha[mask].div_``), so its alpha stays g^2: not the paper's map."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, t, name, layer = photos
    ours = cams.upsample(_ours(lite0, x, t, name, layer, "gradcam_pp"), x.shape[-2:])[:, 0]
    with GradCAMPlusPlus(lite0.model, [layer]) as cam:
        theirs = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    for i in range(2):
        assert corr(ours[i], theirs[i]) >= 0.99, (i, corr(ours[i], theirs[i]))


@pytest.mark.slow
def test_score_cam_matches_torchcam_on_lite0(lite0, photos):
    """One photo at 160 px (a 5 x 5 grid): 320 masked passes for each side."""
    x, t, name, layer = photos
    x, t = F.interpolate(x[:1], size=(160, 160), mode="bilinear", align_corners=False), t[:1]
    ours = _ours(lite0, x, t, name, layer, "scorecam", batch_size=64)
    with torchcam.ScoreCAM(lite0.model, name, batch_size=64) as extractor:
        with torch.no_grad():
            lite0.model(x)
        theirs = extractor(class_idx=t.tolist())[0]
    assert corr(ours[0], theirs[0]) >= 0.99, corr(ours[0], theirs[0])


@pytest.mark.slow
def test_eigen_cam_matches_pytorch_grad_cam_on_lite0(lite0, photos):
    """torch-cam has no Eigen-CAM: pytorch-grad-cam's projection with the sign rule, exactly,
    and its EigenCAM (whose sign is the SVD's) up to that sign."""
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    x, t, name, layer = photos
    ours = _ours(lite0, x, t, name, layer, "eigencam")
    with torch.no_grad():
        acts = {}
        h = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.clone()))
        lite0.model(x)
        h.remove()
    proj = np.maximum(get_2d_projection_with_sign_correction(acts["a"].numpy()), 0)
    np.testing.assert_allclose(ours.numpy(), proj, rtol=1e-3, atol=1e-4 * proj.max())
    up = cams.upsample(ours, x.shape[-2:])[:, 0]
    with EigenCAM(lite0.model, [layer]) as cam:
        theirs = cam(x, targets=None)
    for i in range(2):
        assert max(corr(up[i], theirs[i]), -corr(up[i], theirs[i])) >= 0.99


@pytest.mark.slow
def test_explain_gives_the_upsampled_layer_map(lite0):
    """The whole path: explain's saliency is the layer map upsampled bilinearly, scaled to 1."""
    cat = fv.sample_image("chelsea")
    for method in ("layercam", "eigencam"):
        e = fv.explain(lite0, cat, method=method)
        assert e.params["sigma"] == 0.0 and e.layer == "_blocks.15" and e.saliency.max() == 1.0
        x = lite0.preprocess(torch.from_numpy(e.image).permute(2, 0, 1)[None])
        layer = dict(lite0.model.named_modules())["_blocks.15"]
        ref = _ours(lite0, x, torch.tensor([e.target]), "_blocks.15", layer, method)
        ref = cams.upsample(ref, (224, 224))[0, 0].numpy()
        np.testing.assert_allclose(e.saliency, ref / ref.max(), atol=1e-5)


# ---------------------------------------------------------------- ViT token layers
@pytest.fixture(scope="module")
def small_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=64, num_classes=10)
    return fv.load_model(net.eval(), input_size=64)


def _grid(tensor, h=4, w=4):
    return tensor[:, 1:].reshape(tensor.size(0), h, w, tensor.size(2)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method, reference", [
    ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM"), ("scorecam", "ScoreCAM"), ("gradcam_pp", "GradCAMPlusPlus"),
])
def test_token_layer_cams_match_the_references(small_vit, method, reference):
    """On a ViT block's tokens (patch grid 4 x 4), with each library's reshape_transform:
    torch-cam at the grid's resolution; Grad-CAM++ against pytorch-grad-cam (see above)."""
    g = torch.Generator().manual_seed(1)
    x = small_vit.preprocess(torch.rand(2, 3, 64, 64, generator=g))
    with torch.no_grad():
        t = small_vit.model(x).argmax(1)
    layer = small_vit.model.blocks[1]
    with preserved(small_vit.model):
        if method == "scorecam":
            ours = cams.score_cam(small_vit.model, x, layer, t, name="blocks.1", batch_size=50)
        else:
            ours = cams.gradient_cam(small_vit.model, x, layer, t, method, name="blocks.1")
    assert ours.shape == (2, 4, 4)
    if method == "gradcam_pp":
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        ours = cams.upsample(ours, (64, 64))[:, 0]
        with pgc.GradCAMPlusPlus(small_vit.model, [layer], reshape_transform=_grid) as cam:
            theirs = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    else:
        kw = {"batch_size": 50} if method == "scorecam" else {}
        with getattr(torchcam, reference)(small_vit.model, "blocks.1", reshape_transform=_grid, **kw) as extractor:
            if method == "scorecam":
                with torch.no_grad():
                    small_vit.model(x)
                theirs = extractor(class_idx=t.tolist())[0]
            else:
                theirs = extractor(class_idx=t.tolist(), scores=small_vit.model(x))[0].detach()
    for i in range(2):
        assert corr(ours[i], theirs[i]) >= 0.99, (method, i, corr(ours[i], theirs[i]))


def test_every_cam_method_runs_on_a_token_layer_and_leaves_the_vit_as_it_was(small_vit):
    from conftest import assert_same_state, model_state

    img = np.random.default_rng(0).random((50, 70, 3)).astype(np.float32)
    before = model_state(small_vit.model)
    for method in CAM_METHODS:
        e = fv.explain(small_vit, img, method=method, batch_size=64)
        assert e.layer == "blocks.1" and e.saliency.shape == (64, 64) and e.saliency.max() == 1.0, method
    assert_same_state(before, model_state(small_vit.model))


def test_the_last_block_of_a_class_token_vit_is_refused_by_the_gradient_cams(small_vit):
    img = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    for method in ("gradcam_pp", "xgradcam", "layercam"):
        with pytest.raises(ValueError, match="'blocks.2' do not reach the logits"):
            fv.explain(small_vit, img, method=method, layer="blocks.2")


# ---------------------------------------------------------------- batching, refusals
def test_score_cam_batches_do_not_change_the_map():
    net = TinyNet("relu6", seed=2).double().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 3, 1])
    with preserved(net):
        one = cams.score_cam(net, x, net.conv3, t, name="conv3", batch_size=1)
        many = cams.score_cam(net, x, net.conv3, t, name="conv3", batch_size=7)
        every = cams.score_cam(net, x, net.conv3, t, name="conv3", batch_size=24)
    assert torch.allclose(one, many, atol=1e-12) and torch.allclose(one, every, atol=1e-12)
    # by hand for image 0: the softmax of the logit gains of the 8 masked inputs
    with torch.no_grad():
        acts = net.conv3(net._act(2, net.conv2(net._act(1, net.conv1(x)))))[:1]
        lo, hi = acts.amin(dim=(2, 3), keepdim=True), acts.amax(dim=(2, 3), keepdim=True)
        masks = F.interpolate(((acts - lo) / (hi - lo + 1e-8)).transpose(0, 1), size=(8, 8), mode="bilinear")
        gains = net(masks * x[:1])[:, 0] - net(x[:1])[0, 0]
        want = (torch.softmax(gains, 0)[:, None, None] * acts[0]).sum(0).clamp(min=0)
    assert torch.allclose(one[0], want, atol=1e-12)


def test_cam_methods_refuse_a_layer_without_a_map():
    bundle = fv.load_model(TinyNet(), class_names=list("abcd"), input_size=(8, 8), layer="a3")
    for method in CAM_METHODS:
        with pytest.raises(ValueError, match="layer 'fc' outputs .* not an N x C x h x w map"):
            fv.explain(bundle, torch.rand(3, 8, 8), method=method, layer="fc")
