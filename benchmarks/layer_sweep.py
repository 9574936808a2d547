"""Quality push, part 2 (issue 4): FastLoc's probe layer, k, sigma and the class-level map.

Like ``quality_push.py``, two steps so that many post-processing variants share one set of
backward passes. ``collect`` stores, per query, the top ``K`` neuron maps of the plain ranking
at each probe layer of ``--layers`` (per-neuron normalized), their rank scores, and Grad-CAM
at ``--cam-layer``::

    python benchmarks/layer_sweep.py collect ../shared/data/imagenet-val-wsol /tmp/ls/val --limit 200
    python benchmarks/layer_sweep.py collect /tmp/collages /tmp/ls/collage --limit 200
    python benchmarks/layer_sweep.py analyze ../shared/data/imagenet-val-wsol /tmp/ls/val

Variant names: ``{layer}-p{k}-{rule}[-s{sigma}]``; ``cam`` is Grad-CAM at ``--cam-layer``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quality_push import _rule, _smooth, analyze  # noqa: E402  (the same directory)

from fastloc_viz.core import maps as M  # noqa: E402
from fastloc_viz.imaging.dataset import LocalizationDataset  # noqa: E402

LAYERS = "_blocks.10,_blocks.12,_blocks.14,_blocks.15,_bn1"


def _key(layer: str) -> str:
    return layer.replace("_blocks.", "b").replace("_", "")


def collect(data_dir: str, out_dir: str, limit: int | None, layers: list[str], cam_layer: str,
            k: int) -> None:
    import torch

    from fastloc_viz import load_model
    from fastloc_viz.engine import captum_maps
    from fastloc_viz.engine.neuron_passes import grads_to_maps, neuron_pass
    from fastloc_viz.imaging.batch import load_batch
    from fastloc_viz.model.bundle import as_logits
    from fastloc_viz.model.layers import resolve_layer
    from fastloc_viz.model.state import preserved

    torch.manual_seed(0)
    bundle = load_model("efficientnet_lite0")
    model = bundle.model
    data = LocalizationDataset(data_dir, limit=limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [q for q in data if not (out / f"{q.row:05d}.npz").exists()]
    start = time.perf_counter()
    for done, q in enumerate(todo, 1):
        x = bundle.preprocess(load_batch(q.load_image(), bundle.input_size))
        rec: dict[str, np.ndarray] = {"label": np.array(q.label)}
        with preserved(model):
            for layer in layers:
                npass = neuron_pass(model, x, resolve_layer(model, layer), [q.label], k, "plain",
                                    "loop", as_logits)
                key = _key(layer)
                rec[f"{key}_maps"] = grads_to_maps(npass.input_grads[0]).astype(np.float16)
                rec[f"{key}_score"] = npass.ranked.score[0].numpy()
                rec["pred"] = np.array(int(npass.logits[0].argmax()))
            cam = captum_maps.gradcam(model, x, resolve_layer(model, cam_layer)[1],
                                    torch.tensor([q.label]), as_logits)
            rec["cam"] = cam[0, 0].clamp(min=0).numpy().astype(np.float32)
        np.savez_compressed(out / f"{q.row:05d}.npz", **rec)
        rate = (time.perf_counter() - start) / done
        print(f"{done}/{len(todo)} queries, {rate:.2f} s/query", file=sys.stderr, flush=True)


def variants(d: dict[str, np.ndarray]) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a thunk giving the ``H x W`` saliency of that variant for one stored query."""
    cam = M.normalize(d["cam"])
    v: dict[str, Callable[[], np.ndarray]] = {"cam": lambda: cam}
    keys = [name[: -len("_maps")] for name in d if name.endswith("_maps")]
    for key in keys:
        maps = d[f"{key}_maps"].astype(np.float32)
        for k in (1, 3, 5, 10):
            if k > len(maps):
                continue
            mk = maps[:k]
            for s in (16, 32):
                v[f"{key}-p{k}-sum-s{s}"] = lambda mk=mk, s=s: _rule("sum", mk, sigma=s)
            v[f"{key}-p{k}-mean-cam"] = lambda mk=mk: _rule("sum_cam", mk, sigma=16, cam=cam)
            if k == 5:  # the class map's weight (an experiment), and the library's gate_cam
                for a in (0.5, 2.0):
                    v[f"{key}-p{k}-mean-cam-w{a:g}"] = lambda mk=mk, a=a: M.normalize(_smooth(mk.mean(0), 16) + a * cam)
                v[f"{key}-p{k}-gate-cam-plus-cam"] = lambda mk=mk: _rule("gate_cam", mk, sigma=16, cam=cam)
    return v




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("data_dir")
    c.add_argument("store")
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--layers", default=LAYERS, help="comma-separated probe layers")
    c.add_argument("--cam-layer", default="_blocks.15")
    c.add_argument("--k", type=int, default=10)
    a = sub.add_parser("analyze")
    a.add_argument("data_dir")
    a.add_argument("store")
    a.add_argument("--step", type=float, default=0.05, help="threshold step of the sweep")
    a.add_argument("--only", default=None, help="comma-separated substrings of variant names")
    args = parser.parse_args(argv)
    if args.cmd == "collect":
        collect(args.data_dir, args.store, args.limit, args.layers.split(","), args.cam_layer, args.k)
    else:
        ts = np.round(np.arange(0, 1, args.step), 4)
        only = args.only.split(",") if args.only else None
        print(analyze(args.data_dir, args.store, ts, only, variants, lambda name, o: o in name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
