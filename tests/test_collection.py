"""``fastloc-viz boxes`` (issue 12): sources, bad files, kill and resume, the lock, COCO output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastloc_viz.collection import coco
from fastloc_viz.collection.boxes import OutputLock, boxes, collect_items
from fastloc_viz.model.bundle import ModelBundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    return ModelBundle(model=model, class_names=["cat", "dog", "owl"], input_size=(32, 32), name="tiny")


def _photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _bad_files(folder: Path, good: Path) -> set[str]:
    """One of each kind of bad file; returns their names relative to ``folder``."""
    (folder / "bad").mkdir(parents=True, exist_ok=True)
    (folder / "bad" / "truncated.jpg").write_bytes(good.read_bytes()[:600])  # corrupt JPEG
    (folder / "bad" / "text.png").write_text("not an image\n")  # a non-image
    (folder / "bad" / "gone.jpg").symlink_to(folder / "nowhere.jpg")  # unreadable (tests run as root:
    if os.geteuid() != 0:  # chmod 000 cannot stop root; a dangling link cannot be read by anyone)
        p = folder / "bad" / "locked.jpg"
        shutil.copy(good, p)
        p.chmod(0)
    Image.new("RGB", (4, 4)).save(folder / "bad" / "tiny.png")  # too small
    return {p.relative_to(folder).as_posix() for p in (folder / "bad").iterdir()}


def test_sources_folder_imagefolder_csv(tiny, tmp_path):
    _photo(tmp_path / "plain" / "a.png", 40, 30)
    _photo(tmp_path / "plain" / "deep" / "b.jpg", 20, 50)
    (tmp_path / "plain" / "notes.txt").write_text("ignored: not an image extension")
    items, used = collect_items(tmp_path / "plain", tiny)
    assert used == "folder" and [i.file for i in items] == ["a.png", "deep/b.jpg"] and items[0].label is None
    _photo(tmp_path / "tree" / "dog" / "x.png", 40, 30)
    _photo(tmp_path / "tree" / "2" / "y.png", 40, 30)
    items, used = collect_items(tmp_path / "tree", tiny)
    assert used == "imagefolder" and {(i.file, i.label) for i in items} == {("2/y.png", 2), ("dog/x.png", 1)}
    (tmp_path / "tree" / "zebra").mkdir()  # a folder naming no class: a plain folder, top-1 targets
    assert collect_items(tmp_path / "tree", tiny)[1] == "folder"
    with pytest.raises(ValueError, match="zebra"):
        collect_items(tmp_path / "tree", tiny, layout="imagefolder")
    (tmp_path / "plain" / "set.csv").write_text("image,label,boxes\na.png,owl,1 2 3 4\ndeep/b.jpg,0,\n")
    items, used = collect_items(tmp_path / "plain" / "set.csv", tiny)
    assert used == "csv" and [(i.file, i.label) for i in items] == [("a.png", 2), ("deep/b.jpg", 0)]


def test_run_writes_coco_csv_and_lists_bad_files(tiny, tmp_path):
    src = tmp_path / "src"
    good = [_photo(src / f"g{i}.jpg", 30 + 10 * i, 60 - 5 * i, seed=i) for i in range(5)]
    bad = _bad_files(src, good[0])
    out = tmp_path / "out" / "boxes.json"
    s = boxes(tiny, src, out, method="gradcam", batch_size=2, workers=0, progress=False, masks=True)
    assert s["boxed"] == 5 and {b["file"] for b in s["skipped"]} == bad
    doc = json.loads(out.read_text())
    assert {im["file_name"]: (im["width"], im["height"]) for im in doc["images"]} == {
        f"g{i}.jpg": (30 + 10 * i, 60 - 5 * i) for i in range(5)}
    assert {s["file"] for s in doc["skipped"]} == bad and all(s["reason"] for s in doc["skipped"])
    assert doc["info"]["method"] == "gradcam" and doc["info"]["model"] == "tiny" and "threshold" in doc["info"]["params"]
    assert [c["name"] for c in doc["categories"]] == ["cat", "dog", "owl"]
    for a in doc["annotations"]:
        im = doc["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert 0 < a["score"] <= 1 and a["segmentation"]["size"] == [im["height"], im["width"]]
    # it loads in pycocotools, with its masks
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    c = COCO(str(out))
    assert len(c.getImgIds()) == 5 and len(c.getAnnIds()) == 5
    m = mask_utils.decode(doc["annotations"][0]["segmentation"])
    ys, xs = np.nonzero(m)
    x, y, w, h = doc["annotations"][0]["bbox"]
    assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
    # the CSV holds the same rows
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert lines[0].startswith("file,status,reason") and len(lines) == 1 + 5 + len(bad)
    assert not out.with_name("boxes.json.lock").exists()


def test_boxes_runs_every_new_method(tiny, tmp_path):
    """``boxes --method`` takes any registered method; its parameters pass through."""
    src = tmp_path / "src"
    for i in range(3):
        _photo(src / f"g{i}.jpg", 40, 30, seed=i)
    small = {"window": 8, "stride": 4, "steps": 3, "samples": 2}
    for method in ("gradcam_pp", "xgradcam", "layercam", "scorecam", "eigencam", "saliency",
                   "integrated_gradients", "smoothgrad", "occlusion"):
        out = tmp_path / method / "boxes.json"
        s = boxes(tiny, src, out, method=method, batch_size=2, workers=0, progress=False, **small)
        doc = json.loads(out.read_text())
        assert s["images"] == 3 and doc["info"]["method"] == method, method
        assert s["boxed"] + len([k for k in s["skipped"] if "all zero" in k["reason"]]) == 3, (method, s["skipped"])


def test_a_second_run_on_the_same_output_is_refused(tiny, tmp_path):
    _photo(tmp_path / "src" / "a.png", 40, 30)
    out = tmp_path / "boxes.json"
    lock = OutputLock(out)
    lock.acquire()  # this very process holds it: alive
    try:
        with pytest.raises(RuntimeError, match="another fastloc-viz boxes run .* is writing"):
            boxes(tiny, tmp_path / "src", out, method="gradcam", workers=0, progress=False)
    finally:
        lock.release()
    # a lock whose process is gone is stale: taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.path.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "started": 0}))
    assert boxes(tiny, tmp_path / "src", out, method="gradcam", workers=0, progress=False)["boxed"] == 1
    assert not lock.path.exists()


def test_coco_ap_scores_known_cases():
    gt = coco.ground_truth([{"file": "a.jpg", "width": 100, "height": 80, "label": 1, "boxes": [[10, 10, 50, 50]]},
                            {"file": "b.jpg", "width": 100, "height": 80, "label": 2, "boxes": [[0, 0, 100, 80]]}], 3)
    exact = [{"file": "a.jpg", "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
             {"file": "b.jpg", "category_id": 2, "bbox": [0, 0, 100, 80], "score": 0.8}]
    assert coco.average_precision(gt, exact)["AP"] == pytest.approx(1.0)
    wrong_class = [dict(d, category_id=0) for d in exact]
    assert coco.average_precision(gt, wrong_class)["AP50"] <= 0
    assert coco.centre_box(100, 80) == (25, 20, 75, 60) and coco.whole_box(100, 80) == (0, 0, 100, 80)


# ------------------------------------------------------------------ the real CLI, killed
def _cli(*args, env=None):
    cmd = [sys.executable, "-m", "fastloc_viz.cli", "boxes", *map(str, args)]
    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return cmd, e


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(shared_data, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    names = sorted((shared_data / "images").iterdir())[:9]
    for p in names:
        shutil.copy(p, src / p.name)
    bad = _bad_files(src, names[0])
    common = ["--method", "gradcam", "--batch-size", "2", "--workers", "1", "--no-progress", "--json"]
    cmd, env = _cli(src, "--out", tmp_path / "ref" / "boxes.json", *common)
    ref = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "run" / "boxes.json"
    cmd, env = _cli(src, "--out", out, *common, "--checkpoint", "0", env={"FASTLOC_BOXES_DELAY": "1.5"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out.with_name("boxes.json.parts") / "rank-0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not part.exists() or len(part.read_text().splitlines()) < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(part.read_text().splitlines())
    assert 4 <= done < 9 + len(bad), "the run was not killed part-way"
    assert out.exists()  # a checkpoint was written before the kill
    assert out.with_name("boxes.json.lock").exists()  # left by the kill: stale, taken over below

    cmd, env = _cli(src, "--out", out, *common)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["new_this_run"] == 9 + len(bad) - done

    keys = [json.loads(line)["key"] for line in part.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 9 + len(bad)  # no duplicate, none lost
    a, b = json.loads((tmp_path / "ref" / "boxes.json").read_text()), json.loads(out.read_text())
    assert a["images"] == b["images"] and len(a["images"]) == 9
    assert {s["file"] for s in b["skipped"]} == bad and a["skipped"] == b["skipped"]
    strip = ("score",)
    for x, y in zip(a["annotations"], b["annotations"], strict=True):
        assert {k: v for k, v in x.items() if k not in strip} == {k: v for k, v in y.items() if k not in strip}
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)
    assert (tmp_path / "ref" / "boxes.csv").read_text().count("\n") == out.with_suffix(".csv").read_text().count("\n")


@pytest.mark.slow
def test_explain_cli_takes_a_folder_into_one_report_and_json_leaves_nothing(lite0, tmp_path, monkeypatch, capsys):
    import tempfile

    from fastloc_viz import cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: lite0, raising=False)
    import fastloc_viz

    monkeypatch.setattr(fastloc_viz, "load_model", lambda *a, **k: lite0)
    folder = tmp_path / "imgs"
    _photo(folder / "a.png", 90, 40)
    _photo(folder / "sub" / "b.png", 40, 70, seed=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert cli.main(["explain", str(folder / "a.png"), "--methods", "layercam,saliency", "-k", "2", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["baselines"]) == {"layercam", "saliency"}
    assert cli.main(["explain", str(folder / "a.png"), "--methods", "layercam,nope", "--json"]) == 2
    assert "method='nope' is not one of" in capsys.readouterr().err
    assert cli.main(["explain", str(folder), "--no-baselines", "-k", "2", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [Path(d["image"]).name for d in docs] == ["a.png", "b.png"] and all(d["report"] is None for d in docs)
    assert docs[0]["original_size"] == [90, 40] and len(docs[0]["box_original"]) == 4
    assert list(scratch.iterdir()) == []  # nothing left behind
    out = tmp_path / "r.html"
    assert cli.main(["explain", str(folder / "a.png"), str(folder / "sub" / "b.png"), "--no-baselines", "-k", "2",
                     "--out", str(out)]) == 0
    html = out.read_text()
    assert html.count("class='image-name'") == 2 and "a.png" in html and "b.png" in html


@pytest.mark.slow
def test_torchrun_two_ranks_merge_to_the_single_process_result(shared_data, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted((shared_data / "images").iterdir())[:6]:
        shutil.copy(p, src / p.name)
    (src / "text.png").write_text("not an image\n")
    common = ["--method", "gradcam", "--batch-size", "2", "--workers", "0", "--no-progress", "--json"]
    cmd, env = _cli(src, "--out", tmp_path / "one" / "boxes.json", *common)
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    cmd, env = _cli(src, "--out", tmp_path / "two" / "boxes.json", *common)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    parts = sorted(p.name for p in (tmp_path / "two" / "boxes.json.parts").iterdir())
    assert parts == ["rank-0.jsonl", "rank-1.jsonl", "spec.json"]
    a, b = (json.loads((tmp_path / d / "boxes.json").read_text()) for d in ("one", "two"))
    assert a["images"] == b["images"] and a["skipped"] == b["skipped"] and len(a["images"]) == 6
    for x, y in zip(a["annotations"], b["annotations"], strict=True):
        assert x["bbox"] == y["bbox"] and x["category_id"] == y["category_id"]
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)


# ------------------------------------------------------------------ one image path (issue 19)
def test_a_mixed_folder_reaches_every_consumer_the_same_way(tmp_path, monkeypatch, capsys):
    """evaluate (box-free, on a folder), boxes, atlas and explain FOLDER see the same files in
    the same order, list the unreadable one with its reason and go on, and give the model the
    pixels explain gives it (a 12-bit TIFF is windowed, not 94 % white: the same class)."""
    import fastloc_viz as fv
    from fastloc_viz import cli
    from fastloc_viz.evaluation.boxfree import per_query
    from fastloc_viz.imaging.batch import load_batch
    from fastloc_viz.imaging.dataset import LocalizationDataset
    from fastloc_viz.neurons.atlas import NeuronAtlas
    from test_image_formats import MIXED_BROKEN, MIXED_READABLE, bright_bundle, mixed_folder

    root = mixed_folder(tmp_path / "mixed")
    bundle = bright_bundle()
    listed = sorted(MIXED_READABLE + [MIXED_BROKEN], key=lambda n: n.split("/"))
    ref = {f: fv.explain(bundle, root / f, method="gradcam") for f in MIXED_READABLE}
    assert {e.target for e in ref.values()} == {0, 1}  # both classes among the references
    with Image.open(root / "t12.tif") as im:  # what PIL's convert gave the model: nearly white
        white = fv.explain(bundle, im.convert("RGB"), method="gradcam")
    assert white.image.mean() > 0.9 and white.target != ref["t12.tif"].target  # the test can tell
    data = LocalizationDataset(root, boxes=False)
    q = next(q for q in data if q.image.name == "t12.tif")
    seen = load_batch(data.read(q, bundle.input_size), bundle.input_size)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(seen, ref["t12.tif"].image)

    s = boxes(bundle, root, tmp_path / "boxes.json", method="gradcam", batch_size=3, workers=0, progress=False)
    doc = json.loads((tmp_path / "boxes.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == MIXED_READABLE and s["boxed"] == len(MIXED_READABLE)
    assert [d["file"] for d in doc["skipped"]] == [MIXED_BROKEN] and "is not an image file" in doc["skipped"][0]["reason"]
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    assert {names[a["image_id"]]: a["category_id"] for a in doc["annotations"]} == {f: e.target for f, e in ref.items()}

    atlas = NeuronAtlas.build(bundle, root, "features", top=3, batch_size=3, progress=False)
    assert atlas.images == listed
    assert [d["image"] for d in atlas.skipped] == [MIXED_BROKEN] and "is not an image file" in atlas.skipped[0]["reason"]
    assert {u.image for c in range(atlas.channels) for u in atlas.top(c)} <= set(MIXED_READABLE)

    monkeypatch.setattr(fv, "load_model", lambda *a, **k: bundle)
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(root), "--metrics", "faithfulness", "--methods", "gradcam", "--steps", "4",
                     "--out", str(out), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == len(MIXED_READABLE) and summary["methods"]["gradcam"]["deletion_auc"] >= 0
    assert [(d["row"], d["image"]) for d in summary["skipped"]] == [(listed.index(MIXED_BROKEN), MIXED_BROKEN)]
    rows = per_query(out / "cache", "faithfulness")["gradcam"]
    assert [rows[r]["image"] for r in sorted(rows)] == MIXED_READABLE
    assert {d["image"]: d["target"] for d in rows.values()} == {f: e.target for f, e in ref.items()}
    assert MIXED_BROKEN in (out / "results.md").read_text()

    assert cli.main(["explain", str(root), "--method", "gradcam", "--no-baselines", "--json"]) == 0
    captured = capsys.readouterr()
    docs = json.loads(captured.out)
    assert [Path(d["image"]).relative_to(root).as_posix() for d in docs] == MIXED_READABLE
    assert [d["target"]["index"] for d in docs] == [ref[f].target for f in MIXED_READABLE]
    assert f"skipped {root / MIXED_BROKEN}: ValueError" in captured.err
