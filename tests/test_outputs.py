"""Issue 22, items 1-4: softmax / sigmoid output kinds, one-channel models, a box per finding
(``fv.boxes(..., targets=...)``, BoxReview by label, the explorer's class menu), and the worked
example of docs/scientific-images.md run as written.

The models are hand-set: a one-channel "quadrants" model whose label 0 is the brightness of the
image's top-left quadrant, label 1 of its bottom-right one, label 2 always absent, so which
labels an image has is known from the image alone; the expected probabilities are computed
here from the files' own values with ``torch.sigmoid``, not by the code under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastloc_viz as fv
from fastloc_viz import cli
from fastloc_viz.collection.review_store import ReviewStore

REPO = Path(__file__).resolve().parents[1]
SIDE = 32
LABELS = ["left", "right", "never"]


class Quadrants(nn.Module):
    """One channel in; ``logit_c = 16 * mean(relu(conv(x)) * mask_c) + bias_c``: label 0 sees the
    top-left quadrant, label 1 the bottom-right one, label 2 nothing (bias -3). ``outputs=1``
    keeps label 0 alone (a single-logit detector)."""

    def __init__(self, outputs: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        masks = torch.zeros(3, SIDE, SIDE)
        masks[0, : SIDE // 2, : SIDE // 2] = 1
        masks[1, SIDE // 2 :, SIDE // 2 :] = 1
        self.register_buffer("masks", masks[:outputs])
        self.register_buffer("bias", torch.tensor([-2.0, -2.0, -3.0])[:outputs])

    def forward(self, x):
        a = self.act(self.conv(x))  # N x 1 x H x W
        return (a * self.masks).mean(dim=(2, 3)) * 16 + self.bias


def _grey(tl: float, br: float, noise: int = 0) -> np.ndarray:
    """A 32 x 32 uint8 scan: the top-left quadrant at ``tl``, the bottom-right at ``br``."""
    img = np.full((SIDE, SIDE), 10, dtype=np.uint8)
    img[: SIDE // 2, : SIDE // 2] = round(255 * tl)
    img[SIDE // 2 :, SIDE // 2 :] = round(255 * br)
    if noise:
        img = (img.astype(int) + np.random.default_rng(noise).integers(0, 9, img.shape)).clip(0, 255).astype(np.uint8)
    return img


def _expected(net: nn.Module, arr: np.ndarray, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """The model's own sigmoids on the file's values, by hand: ``uint8 / 255``, normalized."""
    x = torch.from_numpy(arr.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        return torch.sigmoid(net((x - mean) / std))[0]


@pytest.fixture
def quadrants():
    net = Quadrants().eval()
    return net, fv.load_model(net, class_names=LABELS, output="sigmoid", input_size=SIDE, mean=[0.0], std=[1.0],
                              layer="act")


@pytest.fixture
def scans(tmp_path):
    """L-mode PNGs: one finding (left), two (left, right), none."""
    folder = tmp_path / "scans"
    folder.mkdir()
    arrays = {"a_left.png": _grey(1.0, 0.0, 1), "b_both.png": _grey(0.9, 1.0, 2), "c_none.png": _grey(0.1, 0.0, 3)}
    for name, arr in arrays.items():
        Image.fromarray(arr, mode="L").save(folder / name)
    return folder, arrays


# --- 1. output kinds -----------------------------------------------------------------------


def test_sigmoid_probabilities_are_the_models_own_on_the_grey_values(quadrants, scans):
    net, bundle = quadrants
    folder, arrays = scans
    seen = []
    hook = net.conv.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
    try:
        e = fv.explain(bundle, folder / "b_both.png", method="gradcam")
        fv.explain(bundle, fv.read_image(folder / "b_both.png"), method="gradcam")  # grey stored as RGB
    finally:
        hook.remove()
    arr = arrays["b_both.png"]
    # the file's grey values reach the one-channel model as they are: no RGB round trip
    assert len(seen) >= 2 and all(s.shape == (1, 1, SIDE, SIDE) for s in seen)
    for s in seen:
        assert torch.equal(s[0, 0], torch.from_numpy(arr.astype(np.float32) / 255.0))
    want = _expected(net, arr)
    assert want[0] > 0.5 and want[1] > 0.5 and want[2] < 0.5  # the case: two findings
    assert bundle.output == "sigmoid" and bundle.channels == 1
    assert e.output == "sigmoid" and e.label_threshold == 0.5 and e.top_title == "Labels at or above 50%"
    assert e.target == int(want.argmax()) and e.probability == pytest.approx(float(want.max()), abs=1e-6)
    order = [int(i) for i in torch.argsort(want, descending=True) if want[i] >= 0.5]
    assert [p.index for p in e.top5] == order == [1, 0]
    for p in e.top5:
        assert p.probability == pytest.approx(float(want[p.index]), abs=1e-6)
    assert torch.allclose(bundle.predict(folder / "b_both.png")[0], want, atol=1e-6)
    # the probability a label must reach is settable; the softmax reading of the same logits differs
    bundle.label_threshold = 0.85
    high = fv.explain(bundle, folder / "b_both.png", method="gradcam")
    assert [p.index for p in high.top5] == [i for i in order if want[i] >= 0.85] == [1]
    soft = fv.load_model(Quadrants().eval(), class_names=LABELS, input_size=SIDE, mean=[0.0], std=[1.0], layer="act")
    s = fv.explain(soft, folder / "b_both.png", method="gradcam")
    assert soft.output == "softmax" and len(s.top5) == 3 and s.top_title == "Top-5 predictions"
    assert s.probability == pytest.approx(float(torch.softmax(torch.logit(want.double()), 0).max()), abs=1e-5)


def test_a_single_logit_model_has_one_class_and_its_negation(scans):
    folder, arrays = scans
    net = Quadrants(outputs=1).eval()
    bundle = fv.load_model(net, class_names=["nodule"], input_size=SIDE, mean=[0.0], std=[1.0], layer="act")
    assert bundle.output == "sigmoid" and bundle.single_logit  # one output: read as sigmoid unasked
    assert bundle.class_names == ["nodule"] and bundle.target_names == ["nodule", "not nodule"]
    p = float(_expected(net, arrays["c_none.png"])[0])
    assert p < 0.5  # below 0.5: still the default target, the model's one class
    e = fv.explain(bundle, folder / "c_none.png", method="gradcam")
    assert (e.target, e.target_name) == (0, "nodule") and e.probability == pytest.approx(p, abs=1e-6)
    assert [(t.name, round(t.probability, 6)) for t in e.top5] == [("not nodule", round(1 - p, 6))]
    no = fv.explain(bundle, folder / "c_none.png", method="gradcam", target="not nodule")
    assert (no.target, no.target_name) == (1, "not nodule") and no.probability == pytest.approx(1 - p, abs=1e-6)
    # "not nodule" is explained as a model that outputs -logit would be: same neurons, same map
    neg = fv.load_model(nn.Sequential(net, _Negate()).eval(), class_names=["x"], input_size=SIDE, mean=[0.0],
                        std=[1.0], layer="0.act")
    ref = fv.explain(neg, folder / "c_none.png", method="fastloc", target=0, k=1)
    got = fv.explain(bundle, folder / "c_none.png", method="fastloc", target=1, k=1)
    pos = fv.explain(bundle, folder / "c_none.png", method="fastloc", target=0, k=1)
    assert got.probability == pytest.approx(ref.probability, abs=1e-6)
    assert got.neurons == ref.neurons and np.allclose(got.saliency, ref.saliency, atol=1e-6)
    assert got.neurons != pos.neurons and pos.neurons[0].gradient > 0  # not the logit's own ranking
    with pytest.raises(ValueError, match=r"output='softmax' over a model's one output is always 1.0"):
        fv.load_model(net, class_names=["nodule"], output="softmax", input_size=SIDE)
    with pytest.raises(ValueError, match=r"output='logistic' is not one of \['softmax', 'sigmoid'\]"):
        fv.load_model(Quadrants(), output="logistic", input_size=SIDE)
    with pytest.raises(ValueError, match=r"label_threshold=1.5 must be a probability between 0 and 1"):
        fv.load_model(Quadrants(), output="sigmoid", input_size=SIDE, label_threshold=1.5)


class _Negate(nn.Module):
    def forward(self, x):
        return -x


# --- 2. one-channel models -----------------------------------------------------------------


def test_channels_come_from_the_first_convolution_and_mean_std_follow(scans):
    folder, arrays = scans
    grey = fv.load_model(Quadrants(), output="sigmoid", input_size=SIDE)
    assert grey.channels == 1 and grey.mean == (pytest.approx(0.449),) and grey.std == (pytest.approx(0.226),)
    with pytest.raises(ValueError, match=r"mean=\[0.5, 0.5, 0.5\] has 3 values; Quadrants takes 1 channel"):
        fv.load_model(Quadrants(), output="sigmoid", input_size=SIDE, mean=[0.5] * 3)
    with pytest.raises(ValueError, match=r"channels=2 is not one of \[1, 3\]"):
        fv.load_model(Quadrants(), output="sigmoid", input_size=SIDE, channels=2)
    four = nn.Sequential(nn.Conv2d(4, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"first convolution takes 4 channels; .* pass channels= and a transform="):
        fv.load_model(four, input_size=SIDE)
    # a colour photo reaches a grey model as luma (Pillow's weights)
    colour = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 100, 50
    seen = []
    net = grey.model
    hook = net.conv.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
    try:
        fv.explain(grey, colour, method="gradcam", layer="act")
    finally:
        hook.remove()
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert seen[0].shape == (1, 1, SIDE, SIDE)
    assert torch.allclose(seen[0] * 0.226 + 0.449, torch.full((1, 1, SIDE, SIDE), luma), atol=1e-5)


def test_a_three_channel_model_given_a_grey_scan_keeps_todays_behaviour(scans):
    from conftest import TinyNet

    folder, arrays = scans
    net = TinyNet().eval()
    bundle = fv.load_model(net, input_size=SIDE)
    assert bundle.channels == 3 and bundle.output == "softmax" and len(bundle.mean) == 3
    from_file = fv.explain(bundle, folder / "b_both.png", method="gradcam", layer="conv3")
    rgb = np.repeat(arrays["b_both.png"][..., None], 3, axis=2)  # what the file was read as before
    from_rgb = fv.explain(bundle, rgb, method="gradcam", layer="conv3")
    assert from_file.target == from_rgb.target and from_file.probability == from_rgb.probability
    assert np.array_equal(from_file.saliency, from_rgb.saliency) and np.array_equal(from_file.image, from_rgb.image)


def test_overlays_and_reports_draw_a_one_channel_scan_in_grey(quadrants, scans, tmp_path):
    from fastloc_viz.views.report import write_pages

    net, bundle = quadrants
    folder, arrays = scans
    e = fv.explain(bundle, folder / "a_left.png", method="gradcam")
    assert e.image.shape == (SIDE, SIDE, 3)
    assert np.array_equal(e.image[..., 0], e.image[..., 1]) and np.array_equal(e.image[..., 0], e.image[..., 2])
    assert np.allclose(e.image[..., 0], arrays["a_left.png"] / 255.0, atol=1e-6)
    page = write_pages(tmp_path / "r.html", {"scan": {"gradcam": e}}, title="grey").read_text()
    assert "Labels at or above 50%" in page and "left" in page


# --- 3. a box per finding -----------------------------------------------------------------


def test_boxes_positive_gives_one_box_per_label_found(quadrants, scans, tmp_path):
    net, bundle = quadrants
    folder, arrays = scans
    want = {name: _expected(net, arr) for name, arr in arrays.items()}
    found = {name: sorted(int(i) for i in torch.nonzero(p >= 0.5)) for name, p in want.items()}
    assert found == {"a_left.png": [0], "b_both.png": [0, 1], "c_none.png": []}  # the case
    out = tmp_path / "findings.json"
    s = fv.boxes(bundle, folder, out, targets="positive", method="gradcam", workers=0, progress=False)
    assert (s["images"], s["boxed"], s["boxes"]) == (3, 2, 3)
    assert [x["file"] for x in s["skipped"]] == ["c_none.png"]
    assert re.fullmatch(r"no label at or above 50% \(best: left \d+\.\d%\)", s["skipped"][0]["reason"])
    doc = json.loads(out.read_text())
    ids = {im["id"]: im["file_name"] for im in doc["images"]}
    assert sorted(ids.values()) == ["a_left.png", "b_both.png"]  # one image entry per file
    # each label's own probability beside the box; the COCO score is the box's score (issue 20)
    got = sorted((ids[a["image_id"]], a["category_id"], round(a["probability"], 6)) for a in doc["annotations"])
    assert got == sorted((f, c, round(float(want[f][c]), 6)) for f, cs in found.items() for c in cs)
    assert all(0 < a["score"] <= 1 and a["kind"] in ("object", "diffuse", "whole") for a in doc["annotations"])
    assert [c["name"] for c in doc["categories"]] == LABELS
    left = next(a for a in doc["annotations"] if ids[a["image_id"]] == "a_left.png")
    x, y, w, h = left["bbox"]
    assert x + w <= SIDE // 2 + 1 and y + h <= SIDE // 2 + 1  # the left finding's box is where it is
    rows = [line.split(",") for line in out.with_suffix(".csv").read_text().splitlines()[1:]]
    assert sorted((r[0], r[5]) for r in rows if r[1] == "ok") == [("a_left.png", "0"), ("b_both.png", "0"),
                                                                  ("b_both.png", "1")]
    # a rerun resumes (nothing new), another targets setting is refused
    again = fv.boxes(bundle, folder, out, targets="positive", method="gradcam", workers=0, progress=False)
    assert again["new_this_run"] == 0 and again["boxes"] == 3
    with pytest.raises(ValueError, match=r"other settings \(targets: 'positive' before, 'top1' now\)"):
        fv.boxes(bundle, folder, out, targets="top1", method="gradcam", workers=0, progress=False)


def test_boxes_top1_and_named_targets(quadrants, scans, tmp_path):
    net, bundle = quadrants
    folder, arrays = scans
    def boxed(out):
        doc = json.loads(out.read_text())
        names = {im["id"]: im["file_name"] for im in doc["images"]}
        return sorted((names[a["image_id"]], a["category_id"]) for a in doc["annotations"])

    top1 = fv.boxes(bundle, folder, tmp_path / "top1.json", method="gradcam", workers=0, progress=False)
    assert top1["boxes"] == 3  # one per image, whatever its probability
    assert boxed(tmp_path / "top1.json") == sorted((f, int(_expected(net, a).argmax())) for f, a in arrays.items())
    named = fv.boxes(bundle, folder, tmp_path / "named.json", targets=["right", 0], method="gradcam", workers=0,
                     progress=False)
    assert named["boxes"] == 6 and boxed(tmp_path / "named.json") == sorted((f, c) for f in arrays for c in (0, 1))
    with pytest.raises(ValueError, match=r"targets='all' is not one of \['top1', 'positive'\]"):
        fv.boxes(bundle, folder, tmp_path / "x.json", targets="all", workers=0, progress=False)
    with pytest.raises(LookupError, match="not a class name"):
        fv.boxes(bundle, folder, tmp_path / "y.json", targets=["lung"], workers=0, progress=False)


def test_the_boxes_command_takes_targets(quadrants, scans, tmp_path, monkeypatch, capsys):
    net, bundle = quadrants
    folder, _ = scans
    monkeypatch.setattr(fv, "load_model", lambda name, **kw: bundle)
    out = tmp_path / "cli.json"
    code = cli.main(["boxes", str(folder), "--out", str(out), "--targets", "positive", "--method", "gradcam",
                     "--workers", "0", "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["boxed"], summary["boxes"]) == (2, 3)
    assert cli._targets_arg(["positive"]) == "positive" and cli._targets_arg(["left", "2"]) == ["left", 2]


def test_box_review_has_a_card_per_finding_and_filters_by_label(quadrants, scans, tmp_path):
    from fastloc_viz.widgets import BoxReview

    net, bundle = quadrants
    folder, _ = scans
    out = tmp_path / "findings.json"
    fv.boxes(bundle, folder, out, targets="positive", method="gradcam", workers=0, progress=False)
    store = ReviewStore(out)
    assert sorted(p.key for p in store.proposals()) == ["a_left.png", "b_both.png#0", "b_both.png#1"]
    assert [(c, n, k) for c, n, k in store.classes()] == [(0, "left", 2), (1, "right", 1)]
    store.accept("b_both.png#1")
    assert store["b_both.png#1"].status == "accepted" and store["b_both.png#0"].status is None
    with pytest.raises(KeyError, match=r"it has one per class, \['b_both.png#0', 'b_both.png#1'\]"):
        store["b_both.png"]
    store.accept("b_both.png#0")
    coco = store.accepted_coco()
    assert len(coco["images"]) == 1 and len(coco["annotations"]) == 2  # one image, its two findings
    review = BoxReview(out, bundle)
    assert len(review.visible()) == 3
    review.class_menu.value = 1
    assert [p.key for p in review.visible()] == ["b_both.png#1"] and len(review.cards) == 1
    review.class_menu.value = 0
    assert sorted(p.key for p in review.visible()) == ["a_left.png", "b_both.png#0"]
    review.undo("b_both.png#0")
    assert review.store["b_both.png#0"].status is None and review.store["b_both.png#1"].status == "accepted"


def test_the_explorer_lists_the_labels_found_first_with_their_probabilities(quadrants, scans):
    from fastloc_viz.widgets import NeuronExplorer

    net, bundle = quadrants
    folder, arrays = scans
    want = _expected(net, arrays["b_both.png"])
    ex = NeuronExplorer(bundle, folder / "b_both.png", debounce=0.01, k=1)  # the probe layer has one channel
    try:
        options = list(ex.class_box.options)
        assert options[:2] == [f"★ right · {float(want[1]):.0%} (1)", f"★ left · {float(want[0]):.0%} (0)"]
        assert options[2:] == ["never (2)"]
        assert ex.class_box.value == options[0]
        assert [b.description.split(" · ")[0] for b in ex.top5_box.children] == ["right", "left"]
        ex.class_box.value = options[1]
        ex.wait()
        assert ex.explanation.target == 0 and ex.class_box.value == options[1]
    finally:
        ex.close()


# --- 4. the worked example, run as written ---------------------------------------------------


def test_the_scientific_images_worked_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pydicom")
    text = (REPO / "docs" / "scientific-images.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[-1]
    assert "DenseNet" in block and 'targets="positive"' in block and "BoxReview" in block
    monkeypatch.setattr("tempfile.mkdtemp", lambda: str(tmp_path))
    scope: dict = {}
    exec(compile(block, "scientific-images.md", "exec"), scope)
    bundle, scan, e, summary, review = (scope[k] for k in ("bundle", "scan", "e", "summary", "review"))
    assert bundle.channels == 1 and bundle.output == "sigmoid" and len(bundle.class_names) == 14
    # the scan reaches the model as one channel; its probabilities are the model's own sigmoids
    x = torch.from_numpy(scan.pixels[..., 0].copy())[None, None]
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", antialias=True).clamp(0, 1)
    with torch.no_grad():
        want = torch.sigmoid(scope["net"]((x - 0.5) / 0.25))[0]
    assert torch.allclose(bundle.predict(scan)[0], want, atol=1e-5)
    assert e.probability == pytest.approx(float(want.max()), abs=1e-5)
    assert [p.index for p in e.top5] == [int(i) for i in torch.argsort(want, descending=True) if want[i] >= 0.5]
    # one box per finding at or above 0.5, on both scans
    doc = json.loads((tmp_path / "findings.json").read_text())
    per_scan = {}
    for a in doc["annotations"]:
        per_scan.setdefault(a["image_id"], set()).add(a["category_id"])
    for name, im_id in {im["file_name"]: im["id"] for im in doc["images"]}.items():
        p = bundle.predict(tmp_path / "scans" / name)[0]
        assert per_scan[im_id] == {int(i) for i in torch.nonzero(p >= 0.5)}, name
    assert summary["boxes"] == len(doc["annotations"]) == len(review.store)
    label = review.class_menu.value
    assert review.visible() and all(p.category_id == label for p in review.visible())
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "1" and "Labels at or above 50%" in printed
