"""How alike are the five neuron maps of one image? Mean pairwise Pearson correlation of the
k=5 guided-backprop maps (``Explanation.neuron_maps``) and of the k=5 activation maps
(``Explanation.activation_maps``), fastloc with its defaults (EfficientNet-Lite0,
``_blocks.15``), on the first N images of the shared data set.

    OMP_NUM_THREADS=1 python benchmarks/neuron_views.py [--n 200] [--out results.jsonl] [--ablate]

With ``--ablate`` it also records :func:`fastloc_viz.ablate`'s probability drops per image
(each channel off, each unit off, all five off, only the five kept) and prints their medians.

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
from fastloc_viz.engine.activations import mean_pairwise_correlation
from fastloc_viz.imaging.dataset import LocalizationDataset

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-val-wsol"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="neuron_views.jsonl")
    ap.add_argument("--ablate", action="store_true")
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
            if args.ablate:
                a = fv.ablate(bundle, e)
                rec.update(
                    base=a.base.probability,
                    channel_drops=list(a.channel_drops),
                    unit_drops=list(a.unit_drops),
                    all_off=a.all_off.probability,
                    only_kept=a.only_kept.probability,
                    all_off_top_changed=a.all_off.top.index != a.base.top.index,
                )
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
    abl = [r for r in recs if "channel_drops" in r]
    if abl:
        ch = np.array([r["channel_drops"] for r in abl])
        un = np.array([r["unit_drops"] for r in abl])
        base = np.array([r["base"] for r in abl])
        print(f"ablation on {len(abl)} images (probability of the explained class, base median {np.median(base):.3f}):")
        print(f"  one channel off: median drop {np.median(ch):.3f} (largest per image: median {np.median(ch.max(1)):.3f})")
        print(f"  one unit off:    median drop {np.median(un):.4f} (largest per image: median {np.median(un.max(1)):.4f})")
        print(f"  all 5 channels off: median drop {np.median(base - [r['all_off'] for r in abl]):.3f}; "
              f"top-1 changes on {np.mean([r['all_off_top_changed'] for r in abl]):.1%} of images")
        print(f"  only the 5 kept channels: median probability {np.median([r['only_kept'] for r in abl]):.4f}")


if __name__ == "__main__":
    main()
