"""COCO AP of `fastloc-viz boxes` on the 1000 shared images (issues 12 and 20).

Runs `boxes` (resumable: rerun after a kill to continue) on the shared CSV for fastloc and
Grad-CAM, with each image's labelled class as the target, and scores every box set, and the
whole-image and centre baselines, against the ground truth with pycocotools' COCOeval
(bbox AP@0.5 and AP@[.5:.95], every box of the labelled class as ground truth).

Each box set is scored twice: ranked by the box's own score (the COCO ``score``: the share of
the map's mass inside the box, ``core.maps.box_score``) and ranked by the class's probability
(the annotation's ``probability``). COCO AP is averaged over categories, and most of the 725
classes have one image here, where AP does not depend on the score at all; so each is also
given class-agnostic (every box and ground-truth box in one category), where the ranking
across all images counts. The counts of each box kind (object / whole / diffuse) are listed.

    OMP_NUM_THREADS=1 python benchmarks/boxes_ap.py [--limit N] [--work DIR]

The centre baseline is a centred box covering the central 50 % of each side (a quarter of
the area); the whole-image baseline is the whole photo. Both score 1.0 (one box per image).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenet-val-wsol"
sys.path.insert(0, str(REPO))


def main() -> None:
    import fastloc_viz as fv
    from fastloc_viz.collection.coco import average_precision, centre_box, ground_truth, whole_box
    from fastloc_viz.imaging.dataset import LocalizationDataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--work", default="/tmp/fastloc-boxes-ap")
    ap.add_argument("--methods", default="fastloc,gradcam")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ds = LocalizationDataset(args.data, limit=args.limit)
    csv_path = ds.csv_path
    if args.limit is not None:  # a CSV of the first rows, in the work folder, images by absolute path
        csv_path = work / f"first{args.limit}.csv"
        lines = Path(ds.csv_path).read_text().splitlines()
        head, rows = lines[0], lines[1 : args.limit + 1]
        csv_path.write_text("\n".join([head] + [f"{ds.root}/{r}" for r in rows]) + "\n")
    gt = ground_truth(
        [{"file": q.image.relative_to(ds.root).as_posix() if args.limit is None else str(q.image),
          "width": q.width, "height": q.height, "label": q.label, "boxes": q.boxes} for q in ds],
        1000,
    )
    bundle = fv.load_model("efficientnet_lite0")
    table = {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        summary = fv.boxes(bundle, csv_path, work / f"{method}.json", method=method, batch_size=args.batch_size,
                           workers=args.workers, progress=True, checkpoint_s=120)
        doc = json.loads((work / f"{method}.json").read_text())
        extra = {"images": len(doc["images"]), "seconds_this_run": time.perf_counter() - t0,
                 "skipped": len(summary["skipped"]), "kinds": dict(Counter(a["kind"] for a in doc["annotations"]))}
        for score in ("score", "probability"):
            dets = _detections(doc, score)
            table[f"{method}, {score}"] = (average_precision(gt, dets) | extra
                                           | {"agnostic": average_precision(_one_class(gt), _one_class(dets))})
            print(method, score, table[f"{method}, {score}"], flush=True)
    for name, fn in (("whole image", whole_box), ("centre 50 %", centre_box)):
        dets = [{"file": im["file_name"], "category_id": a["category_id"], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                 "score": 1.0}
                for im, a in zip(gt["images"], _labels(ds)) for b in [fn(im["width"], im["height"])]]
        table[name] = average_precision(gt, dets) | {"images": len(dets),
                                                     "agnostic": average_precision(_one_class(gt), _one_class(dets))}
        print(name, table[name], flush=True)
    out = {"n": len(ds), "table": table, "load_average": os.getloadavg(), "torch_threads": _threads()}
    (work / "ap.json").write_text(json.dumps(out, indent=1))
    print("| boxes, ranked by | AP@0.5 | AP@[.5:.95] | class-agnostic AP@0.5 | AP@[.5:.95] | images |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in table.items():
        a = r["agnostic"]
        print(f"| {name} | {r['AP50']:.3f} | {r['AP']:.3f} | {a['AP50']:.3f} | {a['AP']:.3f} | {r['images']} |")


def _detections(doc, score: str) -> list[dict]:
    """The document's boxes as detections ranked by ``score``: ``"score"`` (the box's) or
    ``"probability"`` (the class's)."""
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    return [{"file": names[a["image_id"]], "category_id": a["category_id"], "bbox": a["bbox"], "score": a[score]}
            for a in doc["annotations"]]


def _one_class(x):
    """Ground truth (a dict) or detections (a list) with every category made 0."""
    if isinstance(x, dict):
        return dict(x, annotations=[dict(a, category_id=0) for a in x["annotations"]], categories=[{"id": 0, "name": "any"}])
    return [dict(d, category_id=0) for d in x]


def _labels(ds):
    seen = {}
    for q in ds:
        seen.setdefault(q.image, {"category_id": q.label})
    return list(seen.values())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
