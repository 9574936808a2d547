"""The box-free metrics through evaluate (folder and label-less CSV, cache, --json keys) and
their figures in the HTML report, on a tiny hand-set model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import TinyNet
from PIL import Image

from fastloc_viz import ModelBundle, explain
from fastloc_viz.evaluation.base import MethodSpec
from fastloc_viz.evaluation.boxfree import Faithfulness, Sanity
from fastloc_viz.evaluation.command import json_summary
from fastloc_viz.evaluation.faithfulness import faithfulness_of
from fastloc_viz.evaluation.runner import evaluate, parse_metrics
from fastloc_viz.evaluation.sanity import sanity_check
from fastloc_viz.imaging.dataset import LocalizationDataset
from fastloc_viz.views.faithfulness_plots import (
    faithfulness_figure,
    sanity_curve_figure,
    sanity_strip,
)
from fastloc_viz.views.plots import method_color
from fastloc_viz.views.report import write_report


@pytest.fixture
def tiny_bundle():
    return ModelBundle(TinyNet("relu").eval(), class_names=[f"c{i}" for i in range(4)], input_size=(32, 32),
                       name="tiny")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.png"]):
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_and_label_less_csv(folder):
    data = LocalizationDataset(folder, boxes=False)
    assert [q.image.name for q in data] == ["a.jpg", "b.png", "c.png"]
    assert all(q.label is None and q.boxes.shape == (0, 4) for q in data)
    with pytest.raises(FileNotFoundError):
        LocalizationDataset(folder)  # localization needs a CSV with boxes
    csv = folder / "list.csv"
    csv.write_text("image,label\na.jpg,2\nb.png,\n")
    rows = LocalizationDataset(csv, boxes=False)
    assert [q.label for q in rows] == [2, None]
    with pytest.raises(ValueError, match="lacks columns"):
        LocalizationDataset(csv)
    assert parse_metrics("sanity, localization") == ("localization", "sanity")
    with pytest.raises(ValueError, match="choose from"):
        parse_metrics("faithfulness,boxes")


def test_evaluate_box_free_caches_and_resumes(tiny_bundle, folder, tmp_path):
    data = LocalizationDataset(folder, boxes=False)
    specs = [MethodSpec("gradcam", {"layer": "conv3"}), MethodSpec("guided_backprop")]
    kw = dict(metrics=[Faithfulness(steps=4), Sanity(depths=[1])], cache_dir=tmp_path / "cache")
    part = evaluate(tiny_bundle, data, specs, max_queries=1, **kw)["methods"]
    assert part["guided_backprop"]["n_faithfulness"] == 1
    full = evaluate(tiny_bundle, data, specs, **kw)["methods"]
    again = evaluate(tiny_bundle, data, specs, **kw)["methods"]  # all from the cache
    for label, m in full.items():
        assert m["n_faithfulness"] == m["n_sanity"] == 3
        assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1
        assert len(m["sanity_curve"]) == len(m["sanity_depths"]) == 2  # depth 1 and full (4)
        assert m["sanity_similarity"] == m["sanity_curve"][-1]
        assert again[label]["deletion_auc"] == m["deletion_auc"]
    # the per-image numbers equal the library's on the same image
    q = data[1]
    e = explain(tiny_bundle, q.load_image(), method="guided_backprop")
    curves = faithfulness_of(tiny_bundle, e, steps=4)
    spec = next(p for p in (tmp_path / "cache" / "faithfulness").glob("*/spec.json")
                if json.loads(p.read_text())["method"] == "guided_backprop")
    rows = [json.loads(line) for line in (spec.parent / "part-0.jsonl").read_text().splitlines()]
    assert any(abs(r["deletion_auc"] - curves["deletion"].auc) < 1e-9 for r in rows)
    summary = json_summary({"n": 3, "model": "tiny", "methods": full})
    for m in summary["methods"].values():
        assert set(m) == {"deletion_auc", "insertion_auc", "sanity_similarity", "sanity_curve", "sanity_constant"}


def test_cli_json_on_a_folder(folder, monkeypatch, capsys, tiny_bundle):
    import fastloc_viz
    from fastloc_viz.cli import main

    monkeypatch.setattr(fastloc_viz, "load_model", lambda name, device=None: tiny_bundle)
    rc = main(["evaluate", str(folder), "--metrics", "faithfulness,sanity", "--methods", "guided_backprop",
               "--steps", "4", "--sanity-depths", "1", "--no-cache", "--no-progress", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    m = out["methods"]["guided_backprop"]
    assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1
    assert isinstance(m["sanity_curve"], list) and m["sanity_similarity"] == m["sanity_curve"][-1]


def test_figures_and_report(tiny_bundle, tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random((32, 32, 3))
    methods = ["gradcam", "guided_backprop"]
    exps = {m: explain(tiny_bundle, image, method=m, layer="conv3") for m in methods}
    faith = faithfulness_of(tiny_bundle, exps, steps=4)
    sanity = sanity_check(tiny_bundle, image, methods=methods, layer="conv3", depths=[1, 2])
    f1, f2 = faithfulness_figure(faith), sanity_curve_figure(sanity)
    colors = {t.legendgroup: t.line.color for t in f1.data}
    assert colors == {m: method_color(m) for m in methods} and len(set(colors.values())) == 2
    assert {t.legendgroup: t.line.color for t in f2.data} == colors  # the same colours everywhere
    strip = sanity_strip(sanity, image=image)
    assert len(strip.layout.annotations) == 2 * (1 + 3)
    path = write_report(tmp_path / "r.html", exps, faithfulness=faith, sanity=sanity)
    text = path.read_text()
    assert "Faithfulness: deletion and insertion" in text and "Sanity check: model randomization" in text
    data = json.loads(re.search(r"id='fastloc-data'>(.*?)</script>", text, re.S).group(1).replace("<\\/", "</"))
    assert data["faithfulness"]["gradcam"]["deletion"]["auc"] == pytest.approx(faith["gradcam"]["deletion"].auc)
    assert data["sanity"]["guided_backprop"]["depths"] == [1, 2, 4]


def test_cli_every_metric_family_together_and_its_plot(folder, monkeypatch, capsys, tiny_bundle, tmp_path):
    """All three families in one run, one explanation per image and method shared by them;
    with --out, each family's plot is written (docs/evaluation.md)."""
    import fastloc_viz
    from fastloc_viz.cli import main
    from fastloc_viz.evaluation import runner
    from fastloc_viz.evaluation.localization import JSON_KEYS

    (folder / "annotations.csv").write_text(
        "image,label,wnid,width,height,orig_width,orig_height,boxes\n"
        "a.jpg,1,n0,24,20,24,20,2 2 20 18\nb.png,3,n0,24,21,24,21,0 0 10 10\n")
    monkeypatch.setattr(fastloc_viz, "load_model", lambda name, device=None: tiny_bundle)
    calls = []
    monkeypatch.setattr(runner, "_explain_function", lambda: lambda *a, **k: calls.append(k) or explain(*a, **k))
    out = tmp_path / "out"
    rc = main(["evaluate", str(folder), "--metrics", "localization,faithfulness,sanity", "--methods", "gradcam[layer=conv3]",
               "--steps", "4", "--sanity-depths", "1", "--out", str(out), "--no-progress", "--json"])
    assert rc == 0
    assert [c["target"] for c in calls] == [1, 3]  # the runner explains each query once for all three
    m = json.loads(capsys.readouterr().out)["methods"]["gradcam[layer=conv3]"]
    assert set(m) == {*JSON_KEYS, "deletion_auc", "insertion_auc", "sanity_similarity", "sanity_curve",
                      "sanity_constant"}
    table = (out / "results.md").read_text()
    assert "MaxBoxAcc@0.3" in table and "deletion AUC" in table
    assert {p.name for p in (out / "cache").iterdir()} == {"localization", "faithfulness", "sanity"}
    pages = {name: (out / name).read_text() for name in
             ("accuracy_vs_threshold.html", "faithfulness_curves.html", "sanity_similarity.html")}
    assert '"name":"gradcam[layer=conv3]"' in pages["accuracy_vs_threshold.html"]
    assert "lower area is better" in pages["faithfulness_curves.html"]
    assert "Grad-CAM [layer=conv3] \\u00b7 del. AUC" in pages["faithfulness_curves.html"]
    assert "similarity to the trained model" in pages["sanity_similarity.html"]
    assert "Grad-CAM [layer=conv3] \\u00b7 spearman" in pages["sanity_similarity.html"]
