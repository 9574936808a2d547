"""plots and report: real figures from hand-built explanations (no model)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import viz_fixtures as vf
from PIL import Image

from fastloc_viz.views import cards, plots, report


@pytest.fixture(scope="module")
def expl():
    return vf.explanation()


@pytest.fixture(scope="module")
def methods():
    names = ["fastloc", "gradcam", "guided_backprop", "guided_gradcam"]
    return {m: vf.explanation(m, seed=i) for i, m in enumerate(names)}


def _shape_box(shape) -> tuple[float, float, float, float]:
    return (shape.x0 + 0.5, shape.y0 + 0.5, shape.x1 + 0.5, shape.y1 + 0.5)


def test_box_iou_known_values():
    assert plots.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert plots.box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert plots.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_downsample_keeps_sparse_pixels_with_max_and_averages_with_mean():
    m = np.zeros((224, 224), np.float32)
    m[101, 37] = 1.0
    small, f = plots.downsample(m, 112, reduce="max")
    assert f == 2 and small.shape == (112, 112)
    assert small[50, 18] == 1.0 and small.sum() == 1.0
    mean, _ = plots.downsample(m, 112)
    assert mean[50, 18] == pytest.approx(0.25)
    same, f1 = plots.downsample(m, 300)
    assert f1 == 1 and same is not None and same.shape == (224, 224)


def test_overlay_draws_photo_map_box_and_gt(expl):
    gt = (40, 30, 200, 210)
    fig = plots.overlay(expl, gt_box=gt, opacity=0.4, colorscale="Viridis")
    assert isinstance(fig, go.Figure)
    assert fig.data[0].type == "image" and fig.data[0].source.startswith("data:image/jpeg;base64,")
    hm = fig.data[1]
    assert hm.type == "heatmap" and hm.opacity == 0.4
    z = np.asarray(hm.z)
    assert z.shape == (112, 112) and 0.0 <= z.min() and z.max() <= 1.0
    # the heatmap cell centres sit on the input grid: cell 0 covers pixels 0 and 1
    assert hm.x0 == 0.5 and hm.dx == 2
    assert _shape_box(fig.layout.shapes[0]) == expl.box
    assert _shape_box(fig.layout.shapes[1]) == gt and fig.layout.shapes[1].line.dash == "dash"
    assert f"IoU {plots.box_iou(expl.box, gt):.2f}" in fig.layout.title.text
    # weak map values are transparent, so the photo shows through
    assert fig.data[1].colorscale[0][1].endswith(",0.000)")


def test_overlay_accepts_override_map_and_rejects_bad_opacity(expl):
    flat = np.zeros_like(expl.saliency)
    fig = plots.overlay(expl, saliency=flat, box=(1, 2, 3, 4), show_box=True)
    assert np.asarray(fig.data[1].z).max() == 0.0
    assert _shape_box(fig.layout.shapes[0]) == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="opacity=1.5"):
        plots.overlay(expl, opacity=1.5)
    with pytest.raises(ValueError, match="colorscale='nope'"):
        plots.overlay(expl, colorscale="nope")


def test_neuron_grid_titles_positions_and_disabled(expl):
    fig = plots.neuron_grid(expl, enabled=(1, 3))
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 5
    n1 = expl.neurons[0]
    assert f"#{n1.rank}</b> ch {n1.channel} @({n1.y},{n1.x})" in titles[0]
    assert f"score {n1.score:.3g}" in titles[0] and f"g {n1.gradient:.3g}" in titles[0]
    images = [t for t in fig.data if t.type == "image"]
    markers = [t for t in fig.data if t.type == "scatter"]
    assert len(images) == 5 and len(markers) == 5
    # marker at the centre of the neuron's 16 x 16 cell on the 224 grid (14 x 14 layer)
    assert markers[0].x[0] == pytest.approx((n1.x + 0.5) * 16 - 0.5)
    assert markers[0].y[0] == pytest.approx((n1.y + 0.5) * 16 - 0.5)
    # a disabled neuron's thumbnail differs from its enabled rendering
    all_on = plots.neuron_grid(expl)
    on_images = [t for t in all_on.data if t.type == "image"]
    assert images[0].source == on_images[0].source
    assert images[1].source != on_images[1].source


def test_receptive_field_boxes_the_blob():
    m = np.zeros((64, 64), np.float32)
    m[20:30, 40:50] = 1.0
    x0, y0, x1, y1 = plots.receptive_field(m, sigma=0)
    assert (x0, y0, x1, y1) == (40, 20, 50, 30)


def test_neuron_grid_and_rank_scores_need_neurons(methods):
    with pytest.raises(ValueError, match="'gradcam' has no neurons"):
        plots.neuron_grid(methods["gradcam"])
    with pytest.raises(ValueError, match="'gradcam' has no neurons"):
        plots.rank_scores(methods["gradcam"])


def test_rank_scores_colours_follow_enabled(expl):
    fig = plots.rank_scores(expl, enabled=(2,))
    bar = fig.data[0]
    assert list(bar.y) == [n.score for n in expl.neurons]
    assert bar.marker.color[1] == plots.ENABLED_COLOR
    assert bar.marker.color[0] == plots.DISABLED_COLOR
    resc = plots.rank_scores(vf.explanation("fastloc_rescored"))
    assert len(resc.data) == 2 and resc.data[1].name == "rescored logit"


def test_predictions_highlights_target(expl):
    fig = plots.predictions(expl)
    bar = fig.data[0]
    assert bar.y[-1].startswith("tabby")  # best at the top of a horizontal bar chart
    assert bar.marker.color[-1] == plots.ENABLED_COLOR


def test_method_grid_one_colour_scale_iou_and_time(methods):
    gt = (40, 30, 200, 210)
    fig = plots.method_grid(methods, gt_box=gt)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 4 and all(t.coloraxis == "coloraxis" for t in heat)
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    titles = [a.text for a in fig.layout.annotations]
    for title, (name, e) in zip(titles, methods.items()):
        assert plots.method_label(name) in title
        assert f"{e.time_s * 1000:.0f} ms" in title
        assert f"IoU {plots.box_iou(e.box, gt):.2f}" in title
    assert len(fig.layout.shapes) == 8  # a box and the GT per panel
    with pytest.raises(ValueError, match="at least one"):
        plots.method_grid({})


def test_figures_stay_light(expl, methods):
    assert len(plots.overlay(expl).to_json()) < 150_000
    assert len(plots.neuron_grid(expl).to_json()) < 80_000
    assert len(plots.method_grid(methods).to_json()) < 200_000


# ----------------------------------------------------------------------------- report
def test_report_is_self_contained(tmp_path, methods):
    out = report.write_report(
        tmp_path / "r.html", methods, title="Cat <test>", gt_box=(40, 30, 200, 210)
    )
    text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "r.html"
    assert text.startswith("<!DOCTYPE html>") and "Cat &lt;test&gt;" in text
    # plotly.js inline exactly once, nothing loaded from the network
    assert text.count("Plotly.newPlot") >= 4
    assert not re.search(r"<script[^>]+src=", text)
    assert len(re.findall(r"plotly\.js v\d", text)) == 1
    for label in (
        "FastLoc",
        "Grad-CAM",
        "Guided backprop",
        "Guided Grad-CAM",
        "Top-5 predictions",
        "tabby, tabby cat",
        "The 5 neurons",
        "Timings",
    ):
        assert label in text
    blob = re.search(
        r"<script type='application/json' id='fastloc-data'>(.*?)</script>", text, re.S
    )
    data = json.loads(blob.group(1))
    assert data["gt_box"] == [40, 30, 200, 210]
    assert data["explanations"]["fastloc"]["neurons"][0]["rank"] == 1
    assert len(text) < 7_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temp file left behind


def test_report_single_method_without_neurons(tmp_path, methods):
    out = report.write_report(tmp_path / "g.html", {"gradcam": methods["gradcam"]})
    text = out.read_text(encoding="utf-8")
    assert "Grad-CAM" in text and "neurons</h2>" not in text and "Methods side by side" not in text


def test_report_rejects_bad_input(tmp_path, methods):
    with pytest.raises(ValueError, match="non-empty mapping"):
        report.write_report(tmp_path / "x.html", {})
    with pytest.raises(TypeError, match=r"explanations\['a'\] is a int"):
        report.write_report(tmp_path / "x.html", {"a": 3})


def test_report_unwritable_locations_name_the_path(tmp_path, methods):
    one = {"gradcam": methods["gradcam"]}
    missing = tmp_path / "no" / "such" / "r.html"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing.parent))):
        report.write_report(missing, one)
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        report.write_report(tmp_path, one)
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=re.escape(str(blocker))):
        report.write_report(blocker / "sub" / "r.html", one)
    assert blocker.read_text() == "x"
    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                report.write_report(ro / "r.html", one)
        finally:
            ro.chmod(0o700)


def test_report_write_is_atomic(tmp_path, methods, monkeypatch):
    good = report.write_report(tmp_path / "r.html", methods)
    before = good.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(tmp_path / "r.html", {"gradcam": methods["gradcam"]})
    assert good.read_bytes() == before  # the old report is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # temp file removed


def test_report_file_mode_follows_umask(tmp_path, methods):
    old = os.umask(0o022)
    try:
        out = report.write_report(tmp_path / "m.html", {"gradcam": methods["gradcam"]})
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o644


def test_neuron_card_image_marks_the_neuron_cell(expl):
    img = plots.neuron_card_image(expl, 0, size=112)
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8
    n = expl.neurons[0]
    # the 16 px cell of unit (y, x) is 8 px on the half-size thumbnail; its top-left corner is cyan
    y0, x0 = n.y * 8, n.x * 8
    assert tuple(img[y0, x0]) == (0, 229, 255)
    with pytest.raises(ValueError, match="no neurons"):
        plots.neuron_card_image(vf.explanation("gradcam"), 0)


def test_both_card_thumbnails_keep_the_photos_aspect(expl):
    """One pipeline draws a neuron's guided and activation thumbnails: both at the photo's
    own 3:2 aspect (on the square grid), both with the neuron's cyan cell, in the report's
    cards too."""
    rng = np.random.default_rng(1)
    act = rng.random((len(expl.neurons), 224, 224)).astype(np.float32)
    wide = dataclasses.replace(expl, activation_maps=act, original_size=(480, 320))
    for kind in ("guided", "activation"):
        img = plots.neuron_card_image(wide, 0, size=150, kind=kind)
        assert img.shape == (75, 112, 3), kind  # 480 x 320 photo: 3:2, from the 112 px thumbnail
        assert (img == (0, 229, 255)).all(axis=2).any(), kind
    square = plots.neuron_card_image(dataclasses.replace(wide, original_size=None), 0, size=150, kind="activation")
    assert square.shape == (112, 112, 3)
    html = cards.cards_html(wide, thumb=150)
    sizes = {Image.open(io.BytesIO(base64.b64decode(uri))).size for uri in re.findall(r"base64,([^']+)'", html)}
    assert sizes == {(112, 75)}
    with pytest.raises(ValueError, match="no activation maps"):
        plots.neuron_card_image(expl, 0, kind="activation")
    with pytest.raises(ValueError, match=r"kind='gradcam' is not one of \['guided', 'activation'\]"):
        plots.neuron_card_image(wide, 0, kind="gradcam")


def _lab(hex_colour: str) -> np.ndarray:
    """sRGB hex -> CIELAB (D65)."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_fourteen_methods_get_fourteen_distinct_colours_everywhere():
    from fastloc_viz import METHODS
    from fastloc_viz.views import faithfulness_plots as pf

    colours = {m: plots.method_color(m) for m in METHODS}
    assert len(colours) == 14 and len(set(colours.values())) == 14
    lab = [_lab(c) for c in colours.values()]
    closest = min(np.linalg.norm(a - b) for i, a in enumerate(lab) for b in lab[i + 1:])
    assert closest > 25, closest  # CIELAB distance: apart at a glance
    assert plots.method_color("scorecam[batch_size=4]") == colours["scorecam"]
    assert pf.method_color is plots.method_color  # the curves use the same map
    fig = pf.faithfulness_figure({m: {"deletion_curve": [1.0, 0.5], "insertion_curve": [0.1, 0.9], "fractions": [0, 1],
                                      "deletion_auc": 0.7, "insertion_auc": 0.5} for m in METHODS})
    assert {t.legendgroup: t.line.color for t in fig.data} == colours


def test_rankings_of_the_box_free_checks():
    from fastloc_viz.views import faithfulness_plots as pf

    source = {"a": {"deletion_auc": 0.2, "insertion_auc": 0.5, "deletion_curve": [1, 0], "insertion_curve": [0, 1],
                    "fractions": [0, 1]},
              "b": {"deletion_auc": 0.1, "insertion_auc": 0.6, "deletion_curve": [1, 0], "insertion_curve": [0, 1],
                    "fractions": [0, 1]}}
    rows = pf.faithfulness_ranking(source)
    assert [(r["rank"], r["method"]) for r in rows] == [(1, "b"), (2, "a")]
    assert rows[0]["score"] == pytest.approx(0.5)
    sanity = {"a": {"sanity_curve": [0.9, 0.2], "sanity_depths": [1, 2], "sanity_groups": ["x", "y"]},
              "b": {"sanity_curve": [0.5, 0.6], "sanity_depths": [1, 2], "sanity_groups": ["x", "y"]}}
    assert [r["method"] for r in pf.sanity_ranking(sanity)] == ["a", "b"]  # 0.2 < 0.6 at the deepest
    html = pf.ranking_html(rows, "faithfulness")
    assert html.index("</span> b</td>") < html.index("</span> a</td>") and "0.500" in html
