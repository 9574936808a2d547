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

The same image may appear on several rows with different labels (one per object class to
localize, e.g. collages). Images are resized (stretched, never cropped) to the model's input
size, and :meth:`Query.boxes_at` scales the boxes with them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

COLUMNS = ("image", "label", "wnid", "width", "height", "orig_width", "orig_height", "boxes")
ANNOTATIONS = "annotations.csv"


@dataclass(frozen=True)
class Query:
    """One row: an image, the class to localize in it, and that class's ground-truth boxes.

    Attributes:
        row: 0-based row index in the CSV (data rows only).
        image: absolute path of the stored image.
        label: target class index.
        wnid: WordNet id of the class.
        width, height: size of the stored image in pixels.
        orig_width, orig_height: size of the original image.
        boxes: ``m x 4`` float64 ``(x0, y0, x1, y1)`` in the stored image's pixels.
    """

    row: int
    image: Path
    label: int
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

    def load_image(self) -> Image.Image:
        """The stored image as an RGB PIL image (at its stored size)."""
        with Image.open(self.image) as im:
            return im.convert("RGB")


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
    """The queries of one CSV file, in file order.

    Args:
        path: a directory holding ``annotations.csv``, or the path of a CSV file. Image paths
            are relative to the CSV's directory.
        limit: keep only the first ``limit`` rows (``None``: all).

    Raises:
        FileNotFoundError: no CSV at ``path``.
        ValueError: missing columns or a malformed row (the message names the row).
    """

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        path = Path(path)
        csv_path = path / ANNOTATIONS if path.is_dir() else path
        if not csv_path.is_file():
            raise FileNotFoundError(f"no {ANNOTATIONS} in {path} (expected a data directory or a CSV)")
        if limit is not None and limit < 0:
            raise ValueError(f"limit={limit!r} must be >= 0 or None")
        self.csv_path = csv_path.resolve()
        self.root = self.csv_path.parent
        self.queries: list[Query] = []
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_path} lacks columns {missing}; expected {list(COLUMNS)}")
            for i, rec in enumerate(reader):
                if limit is not None and i >= limit:
                    break
                try:
                    query = Query(
                        row=i,
                        image=self.root / rec["image"],
                        label=int(rec["label"]),
                        wnid=rec["wnid"],
                        width=int(rec["width"]),
                        height=int(rec["height"]),
                        orig_width=int(rec["orig_width"]),
                        orig_height=int(rec["orig_height"]),
                        boxes=parse_boxes(rec["boxes"]),
                    )
                except ValueError as e:
                    raise ValueError(f"{csv_path} row {i} ({rec.get('image')!r}): {e}") from e
                self.queries.append(query)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> Query:
        return self.queries[i]

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    @property
    def name(self) -> str:
        """The data directory's name (or the CSV's stem when it is not ``annotations.csv``)."""
        return self.root.name if self.csv_path.name == ANNOTATIONS else self.csv_path.stem
