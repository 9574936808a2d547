"""COCO output of a collection's boxes, its CSV twin, RLE masks, and AP scoring.

A *row* (what :mod:`fastloc_viz.collection.boxes` records per image, one JSON line each) is a dict:

* every row: ``key`` (unique per image and target: the file, or ``file#<class index>`` when
  the target was asked for), ``item`` (the image's key in the source), ``file`` (path
  relative to the source), ``status`` (``"ok"`` or ``"skipped"``);
* ``"skipped"`` rows: ``reason`` (one line: why the file could not be used, or why it got no
  box: an all-zero map, or with ``targets="positive"`` no label at or above the threshold);
* ``"ok"`` rows: ``width``, ``height`` (the photo's own size), ``target`` (class index),
  ``target_name``, ``given`` (whether the target came from the source, else top-1),
  ``probability`` (the model's probability of the target), ``box`` (``x0 y0 x1 y1`` on the
  model's grid), ``box_original`` (the same in the photo's pixels, see
  :func:`fastloc_viz.core.results.box_to_original`), ``score`` (how sure the box is: the
  share of the map's mass inside it, :func:`fastloc_viz.core.maps.box_score`), ``kind``
  (``"object"``, ``"whole"`` or ``"diffuse"``, :func:`fastloc_viz.core.maps.box_kind`),
  ``params`` (the method's parameters), optionally ``rle`` (the thresholded map as a COCO RLE
  in the photo's pixels), and with ``components="all"`` ``boxes`` (every component: ``box``,
  ``box_original``, ``score`` (its peak over the map's), ``box_score``, ``kind``; the COCO
  output then holds one detection per component).

COCO conventions used here: ``bbox`` is ``[x, y, width, height]`` in the photo's pixels
(pixel-edge coordinates: ``x = x0``, ``width = x1 - x0``); ``category_id`` is the model's
class index (0-based); image and annotation ids count from 1 in the order of the rows;
``score`` is the box's score (each component's own with ``components="all"``); each
annotation also carries ``probability`` (the target's: the softmax, or with sigmoid outputs
the label's own sigmoid) and ``kind``. Skipped files are listed under the extra top-level key
``"skipped"`` (pycocotools ignores it).

``pycocotools`` is needed only for masks and AP (the ``coco`` extra).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CSV_COLUMNS = (
    "file", "status", "reason", "width", "height", "target", "target_name", "given", "probability",
    "score", "kind", "x0", "y0", "x1", "y1", "grid_x0", "grid_y0", "grid_x1", "grid_y1", "path",
)


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError(
            "COCO masks and AP need pycocotools: pip install 'fastloc-viz[coco]'"
        ) from None
    return mask_utils, COCO, COCOeval


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``(x0, y0, x1, y1)`` -> COCO ``[x, y, width, height]``."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def whole_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The whole-image baseline: the photo itself."""
    return (0, 0, int(width), int(height))


def centre_box(width: int, height: int, fraction: float = 0.5) -> tuple[int, int, int, int]:
    """The centre baseline: a box centred in the photo, ``fraction`` of each side long (by
    default the central 50 % of the width and of the height, a quarter of the area), edges
    rounded to the nearest pixel."""
    w, h = int(width), int(height)
    mx, my = (1 - fraction) / 2 * w, (1 - fraction) / 2 * h
    return (round(mx), round(my), w - round(mx), h - round(my))


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """An ``H x W`` bool mask -> COCO compressed RLE (``counts`` as a str), with pycocotools."""
    mask_utils, _, _ = _pycocotools()
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def unique_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``key`` (the first seen), sorted by ``index`` then ``key``."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(str(r["key"]), dict(r))
    return sorted(seen.values(), key=lambda r: (r.get("index", 0), str(r["key"])))


def coco_document(
    rows: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO dict from rows: ``info``, ``images`` (one per file, whatever its boxes),
    ``annotations``, ``categories`` (every class of the model: ``bundle.target_names``), and
    ``skipped`` (``file``, ``reason``)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    image_ids: dict[str, int] = {}
    for r in unique_rows(rows):
        if r["status"] != "ok":
            skipped.append({"file": r["file"], "reason": r.get("reason", "")})
            continue
        if r["file"] not in image_ids:
            image_ids[r["file"]] = len(images) + 1
            images.append({"id": image_ids[r["file"]], "file_name": r["file"],
                           "width": int(r["width"]), "height": int(r["height"])})
        # components="all": one detection per component, each with its own box score and kind
        found = r.get("boxes") or [{"box": r["box"], "box_original": r["box_original"], "box_score": r["score"],
                                    "kind": r["kind"]}]
        for j, b in enumerate(found):
            bbox = xyxy_to_xywh(b["box_original"])
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_ids[r["file"]],
                "category_id": int(r["target"]),
                "bbox": bbox,
                "area": float(bbox[2] * bbox[3]),
                "iscrowd": 0,
                "score": float(b["box_score"]),
                "probability": float(r["probability"]),
                "kind": b["kind"],
                "target_given": bool(r.get("given", False)),
                "box_grid": list(b["box"]),
                "params": r.get("params", {}),
            }
            if r.get("rle") is not None and j == 0:
                ann["segmentation"] = r["rle"]
            annotations.append(ann)
    return {
        "info": dict(info or {}),
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": str(n), "supercategory": ""} for i, n in enumerate(class_names)],
        "skipped": skipped,
    }


def csv_text(rows: Iterable[Mapping[str, Any]], root: str | os.PathLike | None = None) -> str:
    """The rows as CSV (:data:`CSV_COLUMNS`; ``score`` and ``kind`` are the box's, see the module's
    docstring; boxes in the photo's pixels, then on the grid; ``path``: the file's absolute path,
    ``root / file``, empty without ``root``)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in unique_rows(rows):
        path = "" if root is None else str(Path(root) / r["file"])
        if r["status"] != "ok":
            w.writerow([r["file"], r["status"], r.get("reason", "")] + [""] * (len(CSV_COLUMNS) - 4) + [path])
            continue
        w.writerow([r["file"], "ok", "", r["width"], r["height"], r["target"], r["target_name"],
                    int(bool(r.get("given"))), f"{float(r['probability']):.6g}", f"{float(r['score']):.6g}", r["kind"],
                    *r["box_original"], *r["box"], path])
    return out.getvalue()


def ground_truth(records: Iterable[Mapping[str, Any]], class_count: int) -> dict[str, Any]:
    """A COCO ground-truth dict from ``{"file", "width", "height", "label", "boxes"}`` records
    (``boxes``: ``m x 4`` ``x0 y0 x1 y1`` in the photo's pixels, every box of ``label``)."""
    images, annotations, ids = [], [], {}
    for rec in records:
        f = str(rec["file"])
        if f not in ids:
            ids[f] = len(images) + 1
            images.append({"id": ids[f], "file_name": f, "width": int(rec["width"]), "height": int(rec["height"])})
        for b in np.asarray(rec["boxes"], dtype=float).reshape(-1, 4):
            xywh = [float(v) for v in xyxy_to_xywh(b)]
            annotations.append({"id": len(annotations) + 1, "image_id": ids[f], "category_id": int(rec["label"]),
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": str(i)} for i in range(class_count)]}


def average_precision(gt: Mapping[str, Any], detections: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCO box AP of ``detections`` (a COCO document from :func:`coco_document`, or a list of
    ``{"file" | "image_id", "category_id", "bbox", "score"}``) against ``gt``, matched by file
    name, with pycocotools' ``COCOeval``: ``{"AP": AP@[.5:.95], "AP50": AP@0.5, "AP75": ...}``."""
    _, COCO, COCOeval = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: list(v) for k, v in gt.items() if k in ("images", "annotations", "categories")}
        coco_gt.createIndex()
    by_name = {im["file_name"]: im["id"] for im in gt["images"]}
    if isinstance(detections, Mapping):
        names = {im["id"]: im["file_name"] for im in detections["images"]}
        dets = [dict(a, file=names[a["image_id"]]) for a in detections["annotations"]]
    else:
        dets = [dict(d) for d in detections]
    results = []
    for d in dets:
        image_id = by_name.get(d["file"]) if "file" in d else d["image_id"]
        if image_id is None:
            continue
        results.append({"image_id": image_id, "category_id": int(d["category_id"]),
                        "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])})
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}
