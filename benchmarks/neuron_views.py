"""How alike are the five neuron maps of one image? Mean pairwise Pearson correlation of the
k=5 guided-backprop maps (``Explanation.neuron_maps``) and of the k=5 activation maps
(``Explanation.activation_maps``), fastloc with its defaults (EfficientNet-Lite0,
``_blocks.15``), on the first N images of the shared data set.

    OMP_NUM_THREADS=1 python benchmarks/neuron_views.py [--n 200] [--out results.jsonl]

One line per image is appended to ``--out`` as it is done, so an interrupted run resumes
where it stopped; the summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
from tqdm import tqdm

import fastloc_viz as fv
from fastloc_viz.data import LocalizationDataset
from fastloc_viz.neuron_views import mean_pairwise_correlation

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-val-wsol"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="neuron_views.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["image"]] = rec
    bundle = fv.load_model("efficientnet_lite0")
    ds = LocalizationDataset(args.data, limit=args.n)
    with out.open("a") as fh:
        for q in tqdm(ds, desc="images", initial=0):
            key = q.image.name
            if key in done:
                continue
            e = fv.explain(bundle, q.image)
            rec = {
                "image": key,
                "guided": mean_pairwise_correlation(e.neuron_maps),
                "activation": mean_pairwise_correlation(e.activation_maps),
            }
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[key] = rec
    recs = [done[q.image.name] for q in ds]
    g = np.array([r["guided"] for r in recs], dtype=float)
    a = np.array([r["activation"] for r in recs], dtype=float)
    ok = np.isfinite(g) & np.isfinite(a)
    print(f"{ok.sum()} of {len(recs)} images (both correlations defined)")
    for name, v in (("guided-backprop maps", g[ok]), ("activation maps", a[ok])):
        print(
            f"  {name:22s} mean {v.mean():.3f}  median {np.median(v):.3f}  "
            f"quartiles {np.percentile(v, 25):.3f} .. {np.percentile(v, 75):.3f}"
        )
    d = g[ok] - a[ok]
    print(f"  guided minus activation: mean {d.mean():.3f}; activation maps less alike on {np.mean(d > 0):.1%} of images")


if __name__ == "__main__":
    main()
