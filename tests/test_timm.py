"""timm models and Vision Transformers (issue 13): the pretrained_cfg, the ViT probe layer
(tokens on their patch grid, never the patch embedding), Grad-CAM on tokens, the layer menu.

Everything is built untrained and offline (``pretrained=False`` / ``weights=None``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import assert_same_state, model_state, require
from torch import nn

import fastloc_viz as fv
from fastloc_viz.engine import captum_maps
from fastloc_viz.engine.neuron_passes import neuron_pass
from fastloc_viz.imaging import decode
from fastloc_viz.model.bundle import as_logits, bundle_of
from fastloc_viz.model.layers import default_layer, probe_layer_options
from fastloc_viz.model.state import preserved
from fastloc_viz.model.tokens import TokenGrid, token_grid

timm = require("timm")

IMG = np.random.default_rng(0).random((90, 120, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return fv.load_model("timm/vit_tiny_patch16_224", weights=None)


# ---------------------------------------------------------------- pretrained_cfg
def test_timm_resnet18_module_brings_its_pretrained_cfg():
    net = timm.create_model("resnet18", pretrained=False)
    cfg = net.pretrained_cfg
    for bundle in (fv.load_model(net), bundle_of(net)):
        assert bundle.input_size == tuple(cfg["input_size"][1:])
        assert bundle.mean == tuple(cfg["mean"]) and bundle.std == tuple(cfg["std"])
        assert bundle.interpolation == cfg["interpolation"] == "bicubic"
        assert len(bundle.class_names) == 1000 and bundle.class_names[0].startswith("tench")
    assert fv.load_model(net).class_index("goldfish") == 1


def test_unusual_pretrained_cfg_and_overrides():
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    net.pretrained_cfg = {
        **net.pretrained_cfg, "input_size": (3, 64, 96), "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6),
        "interpolation": "nearest", "num_classes": 3,
    }
    b = fv.load_model(net)
    assert (b.input_size, b.mean, b.std, b.interpolation) == ((64, 96), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "nearest")
    assert b.class_names == ["class 0", "class 1", "class 2"]  # no ImageNet table for 3 classes
    b = fv.load_model(net, mean=(0, 0, 0), input_size=32, interpolation="bilinear")  # explicit wins
    assert (b.mean, b.input_size, b.interpolation, b.std) == ((0.0, 0.0, 0.0), (32, 32), "bilinear", (0.4, 0.5, 0.6))
    with pytest.raises(ValueError, match="interpolation='lanczos' is not one of"):
        fv.load_model(net, interpolation="lanczos")


def test_vit_by_name_reads_its_cfg(vit):
    assert vit.name == "timm/vit_tiny_patch16_224"
    assert (vit.input_size, vit.mean, vit.std, vit.interpolation) == ((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert len(vit.class_names) == 1000 and vit.default_layer is None


def test_the_bundles_interpolation_resizes_the_images():
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    bicubic = fv.explain(fv.load_model(net, input_size=64), IMG, method="gradcam")
    bilinear = fv.explain(fv.load_model(net, input_size=64, interpolation="bilinear"), IMG, method="gradcam")
    t = torch.from_numpy(IMG).permute(2, 0, 1)[None]
    assert np.allclose(bicubic.image, decode.resize(t, (64, 64), "bicubic")[0].permute(1, 2, 0).numpy())
    assert np.allclose(bilinear.image, decode.resize(t, (64, 64), "bilinear")[0].permute(1, 2, 0).numpy())
    assert not np.allclose(bicubic.image, bilinear.image)


def test_timm_name_errors():
    with pytest.raises(LookupError, match="vit_tiny_patch16_224"):
        fv.load_model("timm/vit_tiny_patch16_22", weights=None)
    with pytest.raises(LookupError, match="pretrained tag"):
        fv.load_model("timm/vit_tiny_patch16_224.no_such_tag", weights=None)
    with pytest.raises(LookupError, match="weights='IMAGENET1K_V1' is not known for a timm model"):
        fv.load_model("timm/resnet18", weights="IMAGENET1K_V1")
    from fastloc_viz.model import timm_models

    if not timm_models._cached(timm, "vit_tiny_patch16_224"):
        with pytest.raises(FileNotFoundError, match="weights=None"):
            fv.load_model("timm/vit_tiny_patch16_224", download=False)


def test_a_weight_file_loads_into_a_timm_model(tmp_path):
    net = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    b = fv.load_model("timm/resnet10t", weights=str(path))  # a head of another size: rebuilt
    assert b.class_names == [f"class {i}" for i in range(5)]
    assert torch.equal(b.model.fc.weight, net.fc.weight)


# ---------------------------------------------------------------- the ViT probe layer
def test_timm_vit_default_layer_is_a_block_not_the_patch_embedding(vit):
    e = fv.explain(vit, IMG, method="fastloc")
    # Class-token head: after blocks.11 only the class token is read, so its patch tokens get
    # no gradient; blocks.10 is the last block whose patch tokens reach the logits.
    assert vit.default_layer == e.layer == "blocks.10"
    assert e.saliency.shape == (224, 224) and e.layer_shape == (192, 14, 14)
    g = fv.explain(vit, IMG, method="gradcam")
    assert g.layer == "blocks.10" and g.saliency.shape == (224, 224) and g.saliency.max() > 0
    assert np.allclose(g.saliency, e.class_map, atol=1e-5)  # Grad-CAM = fastloc's class map


def test_average_pooled_vit_gets_its_last_block():
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", depth=3)
    b = fv.load_model(net)
    assert fv.explain(b, IMG, method="gradcam").layer == "blocks.2"


def test_the_last_block_of_a_class_token_vit_is_refused(vit):
    before = model_state(vit.model)
    for method in ("fastloc", "gradcam", "guided_gradcam"):
        with pytest.raises(ValueError, match="'blocks.11' do not reach the logits"):
            fv.explain(vit, IMG, method=method, layer="blocks.11")
    assert_same_state(before, model_state(vit.model))


def test_model_unchanged_after_a_failing_call_in_train_mode():
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).train()
    before = model_state(net)
    with pytest.raises(ValueError):
        fv.explain(net, IMG, method="gradcam", layer="blocks.1")
    with pytest.raises(ValueError, match="not an N x C x h x w map"):
        fv.explain(net, IMG, method="fastloc", layer="head")
    assert_same_state(before, model_state(net))
    assert net.training


def test_guided_backprop_on_gelu_warns_once(vit):
    with pytest.warns(UserWarning) as record:
        fv.explain(vit, IMG, method="guided_backprop")
    guided = [str(w.message) for w in record if "guided backprop" in str(w.message)]
    assert len(guided) == 1, guided  # one warning, not one per cause
    assert "gelu" in guided[0] and "plain gradient" in guided[0]


def test_ablation_and_atlas_on_tokens():
    torch.manual_seed(0)
    b = fv.load_model(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, global_pool="avg"))
    e = fv.explain(b, IMG, method="fastloc", k=3)
    a = fv.ablate(b, e)
    assert len(a.channel_drops) == 3 and np.isfinite(a.channel_drops).all()
    atlas = fv.NeuronAtlas.build(b, [IMG, IMG[::-1].copy()], top=2, progress=False)
    assert atlas.layer == e.layer and atlas.layer_shape == (192, 14, 14)


def test_torchvision_vit_b_16():
    b = fv.load_model("vit_b_16", weights=None)
    x = b.preprocess(torch.zeros(1, 3, 224, 224))
    # torchvision zero-initializes the head: no gradient, so its class-token pooling decides.
    assert default_layer(b.model, x, as_logits=as_logits) == "encoder.layers.encoder_layer_10"


def _tiny_tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    v = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    nn.init.normal_(v.heads.head.weight)  # torchvision's zero head would give no gradient at all
    return v.eval()


def test_tiny_torchvision_vit():
    b = fv.load_model(_tiny_tv_vit(), input_size=32)
    e = fv.explain(b, IMG, method="fastloc", k=3)
    assert e.layer == "encoder.layers.encoder_layer_1" and e.layer_shape == (16, 4, 4)
    g = fv.explain(b, IMG, method="gradcam")
    assert np.allclose(g.saliency, e.class_map, atol=1e-5)


def test_only_a_patch_embedding_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.Flatten(), nn.LazyLinear(4))
    net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="patch embedding '0'.*layer="):
        default_layer(net, torch.zeros(1, 3, 64, 64))


# ---------------------------------------------------------------- tokens -> grid, exactly
class HandViT(nn.Module):
    """4 x 4 input, 2 x 2 patches, one class token, one token-wise linear block, a head on the
    mean of the patch tokens: every number is known."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.patch_size = (2, 2)
        self.patch_embed.proj = nn.Conv2d(3, 2, 2, stride=2)
        self.cls = nn.Parameter(torch.tensor([[[0.5, -1.0]]]))
        self.blocks = nn.Sequential(nn.Linear(2, 2))
        self.head = nn.Linear(2, 3)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = self.blocks(torch.cat([self.cls.expand(len(x), -1, -1), t], 1))
        return self.head(t[:, 1:].mean(1))


def test_token_gradcam_exact_numbers():
    model = HandViT().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    layer = model.blocks[0]
    with preserved(model):
        cam = captum_maps.gradcam(model, x, layer, targets, name="blocks.0")
        npass = neuron_pass(model, x, ("blocks.0", layer), [0, 2], k=2)
    # By hand: the block's tokens a (N x 5 x 2); patches a[:, 1:] on the 2 x 2 grid; the logit
    # is W[c] . mean(patches) + b, so each patch's gradient is W[c] / 4 and so is its mean.
    with torch.no_grad():
        t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        a = model.blocks(torch.cat([model.cls.expand(2, -1, -1), t], 1))[:, 1:]  # N x 4 x 2
        w = model.head.weight[targets] / 4  # N x 2
        by_hand = (a * w[:, None]).sum(-1).clamp(min=0).reshape(2, 1, 2, 2)
        by_hand = F.interpolate(by_hand, size=(4, 4), mode="bilinear", align_corners=False)
    assert cam.dtype == torch.float64 and cam.shape == (2, 1, 4, 4)
    assert torch.allclose(cam, by_hand, rtol=0, atol=1e-12)
    assert torch.allclose(npass.class_map, by_hand[:, 0], rtol=0, atol=1e-12)
    assert npass.layer_shape == (2, 2, 2)
    # The neuron passes start from the grid: unit (c, y, x) is token 1 + 2y + x, feature c.
    r = npass.ranked
    i, j = 0, 0
    c, yy, xx = int(r.channel[i, j]), int(r.y[i, j]), int(r.x[i, j])
    xi = x[i : i + 1].clone().requires_grad_(True)
    t = model.patch_embed.proj(xi).flatten(2).transpose(1, 2)
    tok = model.blocks(torch.cat([model.cls, t], 1))
    (g,) = torch.autograd.grad(tok[0, 1 + 2 * yy + xx, c], xi)
    assert torch.allclose(npass.input_grads[i, j], g[0], atol=1e-12)


def test_token_grid_rules():
    grid = TokenGrid(prefix=1, h=2, w=3)
    tokens = torch.arange(2 * 7 * 4.0).reshape(2, 7, 4)
    g = grid(tokens)
    assert g.shape == (2, 4, 2, 3) and torch.equal(g[1, 3, 1, 2], tokens[1, 6, 3])
    back = grid.to_tokens(g, fill=-1)
    assert torch.equal(back[:, 1:], tokens[:, 1:]) and (back[:, 0] == -1).all()
    plain = nn.Linear(2, 2)  # no declared geometry: the smallest prefix that tiles the input
    assert token_grid(plain, (1, 197, 8), (224, 224)) == TokenGrid(1, 14, 14)
    assert token_grid(plain, (1, 50, 8), (224, 224)) == TokenGrid(1, 7, 7)
    assert token_grid(plain, (1, 8, 197), (224, 224)) is None
    assert token_grid(HandViT(), (1, 6, 2), (4, 4)) is None  # declared 1 prefix token, 2 found


# ---------------------------------------------------------------- the layer menu
def test_layer_options_resnet18():
    net = torchvision.models.resnet18(weights=None)
    opts = probe_layer_options(net)
    assert opts == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]  # stride 16 and 32 only
    assert probe_layer_options(net, "layer1.0")[-1] == "layer1.0"  # the current one stays


def test_layer_options_vit(vit):
    opts = probe_layer_options(vit.model, None, vit.input_size)
    assert opts == [f"blocks.{i}" for i in range(6, 11)]  # no stem, no first blocks, not blocks.11
    tv = _tiny_tv_vit()
    assert probe_layer_options(tv, None, (32, 32)) == ["encoder.layers.encoder_layer_1"]
