"""Reader for localization data sets in the shared CSV format (one row = one query).

Format (``annotations.csv`` in the data directory, paths relative to that directory)::

    image,label,wnid,width,height,orig_width,orig_height,boxes
    images/a.JPEG,472,n02951358,227,227,500,375,9.1 105.9 50.4 176.8;168.9 114.4 226.5 135.6

* ``image``: path of the stored image, relative to the CSV's directory.
* ``label``: the class index to localize (the query's target), ``wnid`` its WordNet id.
* ``width, height``: size of the stored image; ``orig_width, orig_height``: of the original
  photograph (informational).
* ``boxes``: every ground-truth box of the query's class, ``x0 y0 x1 y1`` in the stored
  image's pixels, ``;`` between boxes.

Without boxes (for the box-free metrics, ``evaluate --metrics faithfulness,sanity``), only the
``image`` column is required: ``label`` may be missing or empty (the target is then the
model's top-1 class), and so may the size and ``boxes`` columns. A directory without
``annotations.csv`` is read as a plain folder of images (the files
:func:`fastloc_viz.imaging.sources.image_files` lists, in its order), one top-1 query each.

Images are read by :mod:`fastloc_viz.imaging.readers`, as :func:`fastloc_viz.explain` reads a
file (:meth:`LocalizationDataset.read`); a file that cannot be read is recorded in
:attr:`LocalizationDataset.unreadable` with its reason, and its query is left out.

The same image may appear on several rows with different labels (one per object class to
localize, e.g. collages). Images are resized (stretched, never cropped) to the model's input
size, and :meth:`Query.boxes_at` scales the boxes with them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import read_for_model, try_read
from .readers import LoadedImage
from .sources import image_files, no_images

log = logging.getLogger("fastloc_viz")

COLUMNS = ("image", "label", "wnid", "width", "height", "orig_width", "orig_height", "boxes")
ANNOTATIONS = "annotations.csv"


@dataclass(frozen=True)
class Query:
    """One row: an image, the class to localize in it, and that class's ground-truth boxes.

    Attributes:
        row: 0-based row index in the CSV (data rows only).
        image: absolute path of the stored image.
        label: target class index (``None``: the model's top-1 class; box-free data only).
        wnid: WordNet id of the class.
        width, height: size of the stored image in pixels.
        orig_width, orig_height: size of the original image.
        boxes: ``m x 4`` float64 ``(x0, y0, x1, y1)`` in the stored image's pixels (``0 x 4``
            for box-free data).
    """

    row: int
    image: Path
    label: int | None
    wnid: str
    width: int
    height: int
    orig_width: int
    orig_height: int
    boxes: np.ndarray

    def boxes_at(self, size: tuple[int, int]) -> np.ndarray:
        """The boxes scaled to an input grid of ``size = (H, W)``: ``m x 4`` float64."""
        h, w = size
        scale = np.array([w / self.width, h / self.height, w / self.width, h / self.height])
        return self.boxes * scale

    def load_image(self, size: tuple[int, int] | None = None) -> LoadedImage:
        """The stored image, read as :func:`fastloc_viz.explain` reads it for a model of input
        ``size`` (``None``: at full size); see :func:`fastloc_viz.imaging.batch.read_for_model`."""
        return read_for_model(self.image, size)


def parse_boxes(text: str) -> np.ndarray:
    """``"x0 y0 x1 y1;x0 y0 x1 y1"`` -> ``m x 4`` float64 array.

    Raises:
        ValueError: a box that does not have four numbers, or with ``x1 < x0`` / ``y1 < y0``.
    """
    boxes = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        values = part.split()
        if len(values) != 4:
            raise ValueError(f"box {part!r} must be four numbers 'x0 y0 x1 y1'")
        x0, y0, x1, y1 = (float(v) for v in values)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {part!r} has x1 < x0 or y1 < y0")
        boxes.append((x0, y0, x1, y1))
    if not boxes:
        raise ValueError(f"no box in {text!r}")
    return np.asarray(boxes, dtype=np.float64)


class LocalizationDataset:
    """The queries of one CSV file (or of a plain folder of images), in file order.

    Args:
        path: a directory holding ``annotations.csv``, the path of a CSV file (image paths are
            relative to the CSV's directory), or, with ``boxes=False``, a directory of images.
        limit: keep only the first ``limit`` rows (``None``: all).
        boxes: require every column and a box on every row (localization); ``False``: only
            ``image`` is required (see the module's docstring).

    Raises:
        FileNotFoundError: no CSV at ``path`` (nor, with ``boxes=False``, any image).
        ValueError: missing columns or a malformed row (the message names the row).
    """

    def __init__(self, path: str | Path, limit: int | None = None, boxes: bool = True) -> None:
        path = Path(path)
        csv_path = path / ANNOTATIONS if path.is_dir() else path
        if limit is not None and limit < 0:
            raise ValueError(f"limit={limit!r} must be >= 0 or None")
        self.queries: list[Query] = []
        self.boxes = boxes
        self.unreadable: dict[int, str] = {}
        """Row -> why its image could not be read (filled by :meth:`read`)."""
        if not csv_path.is_file() and path.is_dir() and not boxes:
            self._read_folder(path, limit)
            return
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"no {ANNOTATIONS} in {path} (expected a data directory or a CSV"
                + (")" if boxes else ", or a folder of images)")
            )
        self.csv_path = csv_path.resolve()
        self.root = self.csv_path.parent
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            need = COLUMNS if boxes else ("image",)
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_path} lacks columns {missing}; expected {list(need)}"
                                 + (" (localization needs boxes)" if boxes and "boxes" in missing else ""))
            for i, rec in enumerate(reader):
                if limit is not None and i >= limit:
                    break
                try:
                    self.queries.append(self._query(i, rec))
                except ValueError as e:
                    raise ValueError(f"{csv_path} row {i} ({rec.get('image')!r}): {e}") from e

    def _query(self, i: int, rec: dict) -> Query:
        def num(key: str) -> int:
            v = (rec.get(key) or "").strip()
            return int(v) if v else 0

        label = (rec.get("label") or "").strip()
        text = (rec.get("boxes") or "").strip()
        return Query(
            row=i,
            image=self.root / rec["image"],
            label=int(label) if label or self.boxes else None,
            wnid=rec.get("wnid") or "",
            width=num("width"),
            height=num("height"),
            orig_width=num("orig_width"),
            orig_height=num("orig_height"),
            boxes=parse_boxes(text) if text or self.boxes else np.zeros((0, 4)),
        )

    def _read_folder(self, path: Path, limit: int | None) -> None:
        self.root = path.resolve()
        self.csv_path = self.root  # identifies the data (caches, reports)
        files = image_files(self.root)
        if not files:
            raise FileNotFoundError(f"no {ANNOTATIONS} in {str(path)!r}, and {no_images(path)}")
        for i, p in enumerate(files[:limit]):
            self.queries.append(Query(i, p, None, "", 0, 0, 0, 0, np.zeros((0, 4))))

    def read(self, q: Query, size: tuple[int, int] | None) -> LoadedImage | None:
        """``q``'s image (:meth:`Query.load_image`), or ``None`` when it cannot be read: the
        reason is then kept in :attr:`unreadable` (and logged once); runs leave the query out."""
        image, reason = try_read(q.image, size)
        if image is None and q.row not in self.unreadable:
            log.warning("fastloc_viz: row %d, %s cannot be read; left out: %s", q.row, q.image, reason)
            self.unreadable[q.row] = reason
        return image

    def skipped(self) -> list[dict]:
        """The queries left out so far: ``{"row", "image", "reason"}`` each, by row."""
        by_row = {q.row: q for q in self.queries}
        return [{"row": r, "image": self.image_name(by_row[r]), "reason": why}
                for r, why in sorted(self.unreadable.items()) if r in by_row]

    def image_name(self, q: Query) -> str:
        """``q``'s image relative to the data's folder (the path itself when outside it)."""
        return q.image.relative_to(self.root).as_posix() if q.image.is_relative_to(self.root) else str(q.image)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> Query:
        return self.queries[i]

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    @property
    def name(self) -> str:
        """The data directory's name (or the CSV's stem when it is not ``annotations.csv``)."""
        if self.csv_path == self.root or self.csv_path.name == ANNOTATIONS:
            return self.root.name
        return self.csv_path.stem
