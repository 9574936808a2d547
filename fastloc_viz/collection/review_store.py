"""Reviewing the boxes of ``fastloc-viz boxes``: the decisions store behind ``BoxReview``.

:class:`ReviewStore` reads a boxes file (the COCO JSON that ``fastloc-viz boxes`` writes)
and keeps one decision per proposal, an image's box for one class (an image boxed for several
labels, ``targets="positive"``, has one proposal per label): ``"accepted"`` (with the box accepted, the proposed one or
an adjusted one), ``"rejected"``, or none yet. Every decision is saved at once, atomically,
to ``<boxes>.review.json`` beside the boxes file (or the ``decisions`` path given), and read
back when a store is opened again, so decisions survive a kernel restart.
:meth:`ReviewStore.export_coco` writes the accepted boxes as COCO.

Boxes here are ``(x0, y0, x1, y1)`` in the photo's own pixels, like ``box_original``.

Paths resolve from any working directory: an image's ``file`` is relative to the boxes
file's ``info.root`` (absolute, recorded by ``fastloc-viz boxes``; for a file without it, the
recorded ``source`` folder, or a CSV's folder); a relative root is taken relative to the
boxes file's folder, never to the current directory. The decisions file records the boxes
file's absolute path, and the export records the absolute root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.files import write_text_atomic
from .coco import xyxy_to_xywh

STATUSES = ("accepted", "rejected")
SORTS = ("score", "-score", "file", "class")


@dataclass(frozen=True)
class Proposal:
    """One proposed box: the image (``file`` relative to the source, ``path`` to read),
    its size, the class, the score (the COCO ``score``: the box's own,
    :func:`fastloc_viz.core.maps.box_score`, in files written since it exists; the class's
    probability before) and the box in the photo's pixels; ``decision`` is the saved decision
    (``None``: not reviewed yet); ``key`` names it in the store: the file, or
    ``file#<class id>`` when the image has boxes for several classes; ``kind`` (``"object"``,
    ``"whole"``, ``"diffuse"``) and ``probability`` (the class's) when the file has them."""

    file: str
    path: str
    width: int
    height: int
    category_id: int
    category: str
    score: float
    box: tuple[int, int, int, int]
    params: dict
    decision: dict | None = None
    key: str = ""
    kind: str | None = None
    probability: float | None = None

    @property
    def status(self) -> str | None:
        return self.decision["status"] if self.decision else None

    @property
    def final_box(self) -> tuple[int, int, int, int]:
        """The accepted box (adjusted, if it was), else the proposed one."""
        if self.decision and self.decision.get("box") is not None:
            return tuple(int(v) for v in self.decision["box"])  # type: ignore[return-value]
        return self.box


class ReviewStore:
    """The proposals of a boxes file and the decisions taken on them.

    Args:
        boxes: the COCO JSON written by ``fastloc-viz boxes``.
        root: the folder image paths are relative to (default: see the module's docstring;
            else the boxes file's folder).
        decisions: where decisions are saved (default ``<boxes>.review.json``).
    """

    def __init__(self, boxes: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 decisions: str | os.PathLike | None = None) -> None:
        self.boxes_path = Path(boxes).expanduser().resolve()
        doc = json.loads(self.boxes_path.read_text())
        for key in ("images", "annotations", "categories"):
            if key not in doc:
                raise ValueError(f"{str(self.boxes_path)!r} is not a COCO boxes file: it has no {key!r}")
        self.info = doc.get("info", {})
        self.root = self._where(Path(root)) if root is not None else self._root(self.info)
        self.decisions_path = Path(decisions) if decisions else self.boxes_path.with_suffix(".review.json")
        self.skipped = list(doc.get("skipped", []))
        self.categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        images = {im["id"]: im for im in doc["images"]}
        first: dict[tuple[str, int], dict] = {}  # each image's first box per class (its peak's)
        for a in doc["annotations"]:
            first.setdefault((images[a["image_id"]]["file_name"], int(a["category_id"])), a)
        classes_of: dict[str, int] = {}
        for f, _ in first:
            classes_of[f] = classes_of.get(f, 0) + 1
        self._proposals: dict[str, Proposal] = {}
        for (f, c), a in first.items():
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            key = f if classes_of[f] == 1 else f"{f}#{c}"
            self._proposals[key] = Proposal(
                f, f if os.path.isabs(f) else str(self.root / f), int(im["width"]), int(im["height"]), c,
                self.categories.get(c, str(c)), float(a.get("score", 0.0)),
                (int(x), int(y), int(x + w), int(y + h)), dict(a.get("params", {})), key=key, kind=a.get("kind"),
                probability=a.get("probability"))
        self._decisions: dict[str, dict] = self._load()

    def _where(self, path: Path) -> Path:
        """``path`` as recorded: absolute as it is, relative from the boxes file's folder."""
        path = path.expanduser()
        return path if path.is_absolute() else (self.boxes_path.parent / path).resolve()

    def _root(self, info: dict) -> Path:
        if info.get("root"):
            return self._where(Path(info["root"]))
        src = info.get("source")
        if src:
            p = self._where(Path(src))
            if p.is_dir():
                return p
            if p.is_file():
                return p.parent
        return self.boxes_path.parent

    def _load(self) -> dict[str, dict]:
        if not self.decisions_path.exists():
            return {}
        doc = json.loads(self.decisions_path.read_text())
        return {f: d for f, d in doc.get("decisions", {}).items() if f in self._proposals}

    def _save(self) -> None:
        doc = {"boxes": str(self.boxes_path), "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
               "decisions": self._decisions}
        write_text_atomic(self.decisions_path, json.dumps(doc, indent=1), what="review decisions")

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._proposals)

    def __getitem__(self, key: str) -> Proposal:
        """The proposal named ``key`` (its file, or ``file#<class id>``; see :class:`Proposal`)."""
        try:
            p = self._proposals[key]
        except KeyError:
            several = [k for k in self._proposals if k.startswith(f"{key}#")]
            hint = f": it has one per class, {several}" if several else ""
            raise KeyError(f"no proposal {key!r} in {str(self.boxes_path)!r}{hint}") from None
        d = self._decisions.get(key)
        return p if d is None else dataclasses.replace(p, decision=dict(d))

    def proposals(self, *, sort: str = "-score", category: int | str | None = None,
                  status: str | None = "any") -> list[Proposal]:
        """The proposals, sorted (``"-score"``: best first, ``"score"``, ``"file"``, ``"class"``),
        of one class (an id or a name) or all, and of one status (``"accepted"``,
        ``"rejected"``, ``None`` for the undecided, ``"any"``)."""
        if sort not in SORTS:
            raise ValueError(f"sort={sort!r} is not one of {', '.join(SORTS)}")
        out = [self[f] for f in self._proposals]
        if category is not None:
            out = [p for p in out if category in (p.category_id, p.category)]
        if status != "any":
            out = [p for p in out if p.status == status]
        keys = {"score": lambda p: (p.score, p.key), "-score": lambda p: (-p.score, p.key),
                "file": lambda p: p.key, "class": lambda p: (p.category, -p.score)}
        return sorted(out, key=keys[sort])

    def classes(self) -> list[tuple[int, str, int]]:
        """``(id, name, count)`` of the classes proposed, most frequent first."""
        counts: dict[int, int] = {}
        for p in self._proposals.values():
            counts[p.category_id] = counts.get(p.category_id, 0) + 1
        return sorted(((c, self.categories.get(c, str(c)), n) for c, n in counts.items()), key=lambda t: (-t[2], t[1]))

    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "rejected": 0, "undecided": 0}
        for f in self._proposals:
            out[self._decisions.get(f, {}).get("status", "undecided")] += 1
        return out

    # ---------------------------------------------------------------- deciding
    def accept(self, key: str, box: Sequence[int] | None = None, *, threshold: float | None = None) -> Proposal:
        """Accept proposal ``key``'s box (its file, or ``file#<class id>``), or ``box``
        (adjusted: dragged, or re-thresholded at ``threshold``), saved at once."""
        p = self[key]
        d: dict[str, Any] = {"status": "accepted", "time": time.time()}
        if box is not None:
            d["box"] = self._check_box(p, box)
        if threshold is not None:
            d["threshold"] = float(threshold)
        self._decisions[key] = d
        self._save()
        return self[key]

    def reject(self, key: str) -> Proposal:
        self[key]
        self._decisions[key] = {"status": "rejected", "time": time.time()}
        self._save()
        return self[key]

    def undo(self, key: str) -> Proposal:
        """Forget the decision on proposal ``key``."""
        self[key]
        if self._decisions.pop(key, None) is not None:
            self._save()
        return self[key]

    @staticmethod
    def _check_box(p: Proposal, box: Sequence[int]) -> list[int]:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        x0, x1 = sorted((min(max(x0, 0), p.width), min(max(x1, 0), p.width)))
        y0, y1 = sorted((min(max(y0, 0), p.height), min(max(y1, 0), p.height)))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ValueError(f"box {tuple(box)} is empty inside the {p.width} x {p.height} photo {p.file!r}")
        return [x0, y0, x1, y1]

    # ---------------------------------------------------------------- exporting
    def accepted_coco(self) -> dict[str, Any]:
        """The accepted boxes as a COCO dict (ids from 1, bbox ``[x, y, w, h]``)."""
        images, annotations, ids = [], [], {}
        for p in self.proposals(sort="file", status="accepted"):
            if p.file not in ids:
                ids[p.file] = len(images) + 1
                images.append({"id": ids[p.file], "file_name": p.file, "width": p.width, "height": p.height})
            x0, y0, x1, y1 = p.final_box
            annotations.append({"id": len(annotations) + 1, "image_id": ids[p.file], "category_id": p.category_id,
                                "bbox": xyxy_to_xywh(p.final_box), "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                "score": p.score, "adjusted": bool(p.decision and "box" in p.decision)})
        used = sorted({a["category_id"] for a in annotations})
        return {"info": {**self.info, "root": str(self.root), "reviewed": True, "from": str(self.boxes_path)},
                "images": images,
                "annotations": annotations,
                "categories": [{"id": c, "name": self.categories.get(c, str(c))} for c in used]}

    def export_coco(self, path: str | os.PathLike) -> Path:
        """Write :meth:`accepted_coco` to ``path`` atomically."""
        return write_text_atomic(path, json.dumps(self.accepted_coco()), what="accepted boxes")
