"""The decisions store behind BoxReview (issue 12): saved at once, reloaded, exported as COCO."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from fastloc_viz.collection import coco
from fastloc_viz.collection.review_store import ReviewStore


def _boxes_file(tmp_path):
    rows = [
        {"key": "a.jpg", "index": 0, "file": "a.jpg", "status": "ok", "width": 600, "height": 400, "target": 1,
         "target_name": "dog", "given": False, "probability": 0.9, "score": 0.9, "kind": "object", "box": [1, 2, 3, 4], "box_original": [10, 20, 300, 200]},
        {"key": "b.jpg", "index": 1, "file": "sub/b.jpg", "status": "ok", "width": 100, "height": 300, "target": 0,
         "target_name": "cat", "given": False, "probability": 0.4, "score": 0.4, "kind": "object", "box": [1, 2, 3, 4], "box_original": [0, 0, 50, 80]},
        {"key": "c.jpg", "index": 2, "file": "c.jpg", "status": "ok", "width": 50, "height": 50, "target": 1,
         "target_name": "dog", "given": True, "probability": 0.7, "score": 0.7, "kind": "object", "box": [1, 2, 3, 4], "box_original": [5, 5, 45, 45]},
        {"key": "bad.png", "index": 3, "file": "bad.png", "status": "skipped", "reason": "ValueError: not an image"},
    ]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco.coco_document(rows, ["cat", "dog"], {"source": str(tmp_path)})))
    return path


def test_sorting_filtering_and_decisions_survive_a_reopen(tmp_path):
    path = _boxes_file(tmp_path)
    s = ReviewStore(path)
    assert [p.file for p in s.proposals()] == ["a.jpg", "c.jpg", "sub/b.jpg"]  # best score first
    assert [p.file for p in s.proposals(sort="score")] == ["sub/b.jpg", "c.jpg", "a.jpg"]
    assert [p.file for p in s.proposals(category="dog")] == ["a.jpg", "c.jpg"]
    assert s.classes() == [(1, "dog", 2), (0, "cat", 1)] and s.skipped[0]["file"] == "bad.png"
    assert s["a.jpg"].box == (10, 20, 300, 200) and s["sub/b.jpg"].path == str(tmp_path / "sub/b.jpg")
    s.accept("a.jpg")
    s.reject("sub/b.jpg")
    s.accept("c.jpg", box=(-5, 10, 60, 40.4), threshold=0.5)  # adjusted: clipped to the photo
    assert (tmp_path / "boxes.review.json").exists()  # saved at once, nothing else left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.json", "boxes.review.json"]

    again = ReviewStore(path)  # a new kernel
    assert again.counts() == {"accepted": 2, "rejected": 1, "undecided": 0}
    assert again["c.jpg"].final_box == (0, 10, 50, 40) and again["c.jpg"].decision["threshold"] == 0.5
    assert [p.file for p in again.proposals(status="rejected")] == ["sub/b.jpg"]
    again.undo("sub/b.jpg")
    assert ReviewStore(path)["sub/b.jpg"].status is None


def test_export_holds_only_accepted_boxes_and_loads_in_pycocotools(tmp_path):
    path = _boxes_file(tmp_path)
    s = ReviewStore(path)
    s.accept("a.jpg")
    s.accept("c.jpg", box=(1, 2, 30, 40))
    s.reject("sub/b.jpg")
    out = s.export_coco(tmp_path / "accepted.json")
    doc = json.loads(out.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["a.jpg", "c.jpg"]
    assert [a["bbox"] for a in doc["annotations"]] == [[10, 20, 290, 180], [1, 2, 29, 38]]
    assert [a["adjusted"] for a in doc["annotations"]] == [False, True]
    from pycocotools.coco import COCO

    assert len(COCO(str(out)).getAnnIds()) == 2


def test_bad_calls_name_the_problem(tmp_path):
    s = ReviewStore(_boxes_file(tmp_path))
    with pytest.raises(KeyError, match="nope.jpg"):
        s.accept("nope.jpg")
    with pytest.raises(ValueError, match="empty"):
        s.accept("a.jpg", box=(5, 5, 5, 9))
    with pytest.raises(ValueError, match="sort"):
        s.proposals(sort="size")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a COCO boxes file"):
        ReviewStore(tmp_path / "x.json")


def test_box_review_gallery_decides_and_a_new_gallery_finds_the_decisions(tmp_path):
    from fastloc_viz.widgets import BoxReview

    path = _boxes_file(tmp_path)
    for name, (w, h) in {"a.jpg": (600, 400), "sub/b.jpg": (100, 300), "c.jpg": (50, 50)}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (120, 80, 40)).save(tmp_path / name)
    g = BoxReview(path, page_size=2)
    assert [p.file for p in g.current] == ["a.jpg", "c.jpg"] and g.page_label.value.count("of 2")
    thumb = Image.open(io.BytesIO(g.cards[0].children[0].value))
    assert thumb.size == (160, 107)  # the photo's own 3:2 aspect
    g.cards[0].children[2].children[0].click()  # accept a.jpg
    g._on_key({"key": "ArrowRight"})
    g._on_key({"key": "r"})  # reject c.jpg (selected)
    g.edit("a.jpg")
    b = g.bbox_widget.bboxes[0]
    g.bbox_widget.bboxes = [dict(b, x=b["x"] + 10)]
    g.accept_edit()
    g.class_menu.value = 0  # cat only
    assert [p.file for p in g.current] == ["sub/b.jpg"]
    again = BoxReview(path)  # after a kernel restart
    assert again.store.counts() == {"accepted": 1, "rejected": 1, "undecided": 1}
    assert again.store["a.jpg"].final_box[0] == 10 + round(10 / g._edit_scale)
    doc = json.loads(again.export(tmp_path / "acc.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["a.jpg"]


def test_box_review_opened_from_another_folder_shows_every_scan(tmp_path, monkeypatch):
    """A boxes run with relative paths, reviewed from another working directory: every card
    is the photo, read by the one reader (DICOM, FITS, a compressed FITS HDU and a 12-bit
    TIFF windowed: neither the grey 'cannot read' card nor white), at its own aspect."""
    import csv
    import os

    import numpy as np

    from fastloc_viz.collection.boxes import boxes
    from fastloc_viz.widgets import BoxReview
    from test_image_formats import MIXED_BROKEN, MIXED_READABLE, bright_bundle, mixed_folder

    work = tmp_path / "work"
    mixed_folder(work / "mixed")
    monkeypatch.chdir(work)
    boxes(bright_bundle(), "mixed", "out/boxes.json", method="gradcam", workers=0, progress=False)
    monkeypatch.chdir(tmp_path / "work" / "mixed" / "sub")  # anywhere else
    g = BoxReview(os.path.relpath(work / "out" / "boxes.json"), page_size=20, thumb=96)
    cards = {p.file: Image.open(io.BytesIO(c.children[0].value)).convert("L") for p, c in zip(g.current, g.cards)}
    assert sorted(cards) == MIXED_READABLE and [s["file"] for s in g.store.skipped] == [MIXED_BROKEN]
    for f, card in cards.items():
        a = np.asarray(card, dtype=np.float64)
        p = g.store[f]
        assert max(card.size) == 96 and abs(card.size[0] / card.size[1] - p.width / p.height) < 0.05, (f, card.size)
        assert a.std() > 20 and (a > 250).mean() < 0.5 and (np.abs(a - 200) < 2).mean() < 0.5, f
    assert "cannot be read" not in "".join(c.children[1].value for c in g.cards)
    big = Image.open(io.BytesIO(g.cards[[p.file for p in g.current].index("comp.fits")].children[0].value))
    assert big.size == (96, 77)  # the compressed HDU's 50 x 40 image, not its table
    g.edit("t12.tif")  # the editor reads the same way
    shown = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(g.bbox_widget.image.split(",", 1)[1])))
                       .convert("L"), dtype=np.float64)
    assert shown.shape == (341, 512) and shown.std() > 20 and (shown > 250).mean() < 0.5
    g.accept("scan.dcm")
    assert json.loads((work / "out" / "boxes.review.json").read_text())["boxes"] == str(work / "out" / "boxes.json")
    with open(work / "out" / "boxes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["file"]: r["path"] for r in rows} == {n: str(work / "mixed" / n) for n in MIXED_READABLE + [MIXED_BROKEN]}
