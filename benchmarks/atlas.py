"""Build time and file size of a neuron atlas on the shared data set (1000 ImageNet
validation images, EfficientNet-Lite0, the default probe layer ``_blocks.15``).

    OMP_NUM_THREADS=1 python benchmarks/atlas.py [--out /tmp/atlas-lite0.npz] [--limit N] [--top 8]

Writes the atlas to ``--out`` (outside the repository: it holds patches of ImageNet
images), with a checkpoint beside it: an interrupted run resumes (the time printed is then
that of the resumed part only, and says so). Prints the scan and patch stages' times, the
file size, and a sample of channels with their top images' labels.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import torch

import fastloc_viz as fv
from fastloc_viz.imaging.dataset import LocalizationDataset

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-val-wsol"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="/tmp/atlas-lite0.npz")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    bundle = fv.load_model("efficientnet_lite0")
    ds = LocalizationDataset(args.data, limit=args.limit)
    ck = pathlib.Path(args.out + ".partial")
    resumed = ck.exists()
    t0 = time.perf_counter()
    atlas = fv.NeuronAtlas.build(bundle, ds, top=args.top, batch_size=args.batch_size, checkpoint=ck)
    t1 = time.perf_counter()
    path = atlas.save(args.out)
    t2 = time.perf_counter()
    size = path.stat().st_size
    print(
        f"{atlas!r}\nbuild {t1 - t0:.1f} s{' (resumed part only)' if resumed else ''} for {len(ds)} images "
        f"({1000 * (t1 - t0) / len(ds):.0f} ms per image, {torch.get_num_threads()} thread(s)); save {t2 - t1:.2f} s; "
        f"file {size / 1e6:.2f} MB ({size / atlas.image_index.size / 1e3:.1f} kB per kept unit, {len(atlas.signs)} sign(s))"
    )
    t = time.perf_counter()
    again = fv.NeuronAtlas.load(path)
    print(f"load {time.perf_counter() - t:.2f} s; patch decode {_time(lambda: again.patches(0)) * 1000:.1f} ms for one channel")
    for c in (0, 1, 2):
        print(f"  channel {c}: " + "; ".join(f"{', '.join(u.labels)} ({u.activation:.1f})" for u in again.top(c, 5)))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
