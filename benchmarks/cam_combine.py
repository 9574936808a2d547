"""Prototype: FastLoc neuron maps combined with the class-level Grad-CAM map of a later layer.

Both maps come from one forward pass in principle (Grad-CAM's layer ``_blocks.15`` lies above
the probe layer ``_blocks.10``; its gradient falls out of the backward pass to the probe layer).
Here they are computed with two ``explain`` calls for simplicity; only the saliencies matter.

    python benchmarks/cam_combine.py /tmp/collages --limit 100
    python benchmarks/cam_combine.py ../shared/data/imagenet-val-wsol --limit 100

Prints a markdown table of the variants (thresholds step ``--step``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quality_push import _rule, _smooth, add_variant, variant_table  # noqa: E402  (the same directory)

from fastloc_viz import explain, load_model  # noqa: E402
from fastloc_viz.core import maps as M  # noqa: E402
from fastloc_viz.evaluation.metrics import LocalizationCounts  # noqa: E402
from fastloc_viz.imaging.dataset import LocalizationDataset  # noqa: E402


def variants(fl: dict[str, np.ndarray], cam: np.ndarray) -> dict[str, np.ndarray]:
    """Saliency per variant from the neuron maps of each ranking and the Grad-CAM map."""
    out = {"gradcam15": cam}
    for rank, maps in fl.items():
        for k in (1, 3, 5):
            mk = maps[:k]
            f = _rule("sum", mk)
            out[f"{rank}{k}-sum"] = f
            out[f"{rank}{k}-x-cam15"] = M.normalize(f * cam)
            out[f"{rank}{k}-mean-cam15"] = _rule("sum_cam", mk, cam=cam)
            out[f"{rank}{k}-gate-only15"] = _smooth(mk.mean(0) * cam)  # not the library's gate_cam
            out[f"{rank}{k}-sqrt-x-cam15"] = M.normalize(np.sqrt(f * cam))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--layer", default="_blocks.10")
    parser.add_argument("--cam-layer", default="_blocks.15")
    args = parser.parse_args(argv)
    thresholds = np.round(np.arange(0, 1, args.step), 4)
    bundle = load_model("efficientnet_lite0")
    data = LocalizationDataset(args.data_dir, limit=args.limit)
    counts: dict[str, LocalizationCounts] = {}
    for i, q in enumerate(data):
        image = q.load_image()
        fl = {}
        for rank in ("g", "p"):
            e = explain(bundle, image, method="fastloc", target=q.label, layer=args.layer, k=5,
                        rank_grad="guided" if rank == "g" else "plain")
            fl[rank] = e.neuron_maps
        c = explain(bundle, image, method="gradcam", target=q.label, layer=args.cam_layer)
        gt = q.boxes_at(bundle.input_size)
        for name, sal in variants(fl, c.saliency).items():
            add_variant(counts, name, sal, gt, row=q.row, label=q.label,
                        prediction=c.top5[0].index, thresholds=thresholds)
        print(f"{i + 1}/{len(data)}", file=sys.stderr, flush=True)
    print(f"{len(data)} queries from {args.data_dir}; thresholds step {args.step}\n")
    print("\n".join(variant_table(counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
