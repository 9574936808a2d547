"""Build the 2x2 class-query collage set from a box-annotated data set (shared CSV format).

Each collage tiles four single-box images of four different classes into a 2x2 grid; the
output CSV has one row per quadrant (the quadrant's class as the label, its box shifted into
the collage), so evaluating it queries every class of every collage: a class-specific method
must point at the right quadrant.

    python scripts/build_collages.py ../shared/data/imagenet-val-wsol /tmp/collages --n 50
    python scripts/build_collages.py ../shared/data/imagenet-val-wsol /tmp/coll_dev --rows 0:300 --box quadrant

``--box object`` (default): the ground truth is the queried photo's own object box, moved into
the collage. ``--box quadrant``: the ground truth is the queried photo's whole quadrant (the
question is only "which photo?", as in a class-query test that ignores the object's extent).
``--rows A:B`` draws the photos from source rows ``A .. B-1`` only, so a development set and a
held-out set can be built from disjoint photos.

Deterministic for a given ``--seed``. Writes ``OUT/annotations.csv`` and ``OUT/images/*.png``
(lossless, so the tiles keep the source pixels). Never write into the repository: the images
are ImageNet's.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastloc_viz.imaging.dataset import COLUMNS, LocalizationDataset, Query  # noqa: E402


def pick_groups(queries: list[Query], n: int, seed: int) -> list[list[Query]]:
    """``n`` groups of four single-box queries with four distinct labels, each image used once.

    The single-box queries are shuffled with ``seed``; groups are filled greedily in that
    order (a query whose label is already in the open group waits for the next group).
    """
    single = [q for q in queries if len(q.boxes) == 1]
    order = np.random.default_rng(seed).permutation(len(single))
    pool = [single[i] for i in order]
    groups: list[list[Query]] = []
    waiting: list[Query] = []
    for q in pool:
        if len(groups) == n:
            break
        candidates = waiting + [q]
        group: list[Query] = []
        rest: list[Query] = []
        for c in candidates:
            if len(group) < 4 and c.label not in {g.label for g in group}:
                group.append(c)
            else:
                rest.append(c)
        if len(group) == 4:
            groups.append(group)
            waiting = rest
        else:
            waiting = group + rest
    if len(groups) < n:
        raise ValueError(
            f"only {len(groups)} collages of four distinct single-box classes can be built "
            f"from {len(single)} single-box rows; asked for n={n}"
        )
    return groups


def build(data_dir: str | Path, out_dir: str | Path, n: int = 50, seed: int = 0,
          cell: int = 227, box: str = "object", rows: tuple[int, int] | None = None) -> Path:
    """Write ``n`` collages and their ``annotations.csv`` into ``out_dir``; returns the CSV path.

    Args:
        data_dir: source data set (directory with ``annotations.csv``).
        out_dir: destination (created).
        n: number of collages (``4 n`` rows).
        seed: shuffling seed.
        cell: side of one quadrant in pixels (source images are resized to ``cell x cell``).
        box: ``"object"`` (the photo's box) or ``"quadrant"`` (the photo's whole quadrant).
        rows: ``(start, stop)``: use only these source rows.
    """
    if box not in ("object", "quadrant"):
        raise ValueError(f"box={box!r} is not one of ('object', 'quadrant')")
    if n <= 0:
        raise ValueError(f"n={n} must be a positive number of collages")
    out = Path(out_dir)
    if out.resolve().is_relative_to(REPO):
        raise ValueError(f"out_dir={out} is inside the repository; ImageNet images must stay out")
    (out / "images").mkdir(parents=True, exist_ok=True)
    queries = list(LocalizationDataset(data_dir))
    if rows is not None:
        queries = [q for q in queries if rows[0] <= q.row < rows[1]]
    groups = pick_groups(queries, n, seed)
    out_rows = []
    for i, group in enumerate(groups):
        canvas = Image.new("RGB", (2 * cell, 2 * cell))
        name = f"images/collage_{i:04d}.png"
        for j, q in enumerate(group):
            ox, oy = (j % 2) * cell, (j // 2) * cell
            with Image.open(q.image) as im:
                canvas.paste(im.convert("RGB").resize((cell, cell), Image.BILINEAR), (ox, oy))
            x0, y0, x1, y1 = q.boxes_at((cell, cell))[0] if box == "object" else (0, 0, cell, cell)
            text = f"{x0 + ox:.1f} {y0 + oy:.1f} {x1 + ox:.1f} {y1 + oy:.1f}"
            out_rows.append([name, q.label, q.wnid, 2 * cell, 2 * cell, 2 * cell, 2 * cell, text])
        canvas.save(out / name)
    csv_path = out / "annotations.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(out_rows)
    return csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="source data set (directory with annotations.csv)")
    parser.add_argument("out_dir", help="where to write the collages (outside the repository)")
    parser.add_argument("--n", type=int, default=50, help="number of collages (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default: %(default)s)")
    parser.add_argument("--cell", type=int, default=227, help="quadrant side in pixels (default: %(default)s)")
    parser.add_argument("--box", choices=("object", "quadrant"), default="object",
                        help="ground truth: the photo's object box or its whole quadrant (default: %(default)s)")
    parser.add_argument("--rows", default=None, help="A:B, use only source rows A..B-1")
    args = parser.parse_args(argv)
    rows = None
    if args.rows:
        a, _, b = args.rows.partition(":")
        rows = (int(a or 0), int(b) if b else 10**9)
    path = build(args.data_dir, args.out_dir, n=args.n, seed=args.seed, cell=args.cell, box=args.box, rows=rows)
    print(f"wrote {4 * args.n} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
