"""Quality push (issue 4, section 6): FastLoc variants against Grad-CAM, on real images.

Two steps, so that many post-processing variants share one set of backward passes:

``collect`` runs the model once per query (batched) and stores, per query, an ``.npz`` with
the top ``K`` neuron maps of the guided and of the plain ranking (per-neuron normalized, plus
each map's own maximum so the raw magnitudes can be restored), their rank scores and
positions, the authors' rescored logits of the guided candidates, and the Grad-CAM map of the
same layer::

    python benchmarks/quality_push.py collect ../shared/data/imagenet-val-wsol /tmp/qp/val200 --limit 200
    python benchmarks/quality_push.py collect /tmp/collages /tmp/qp/collage --limit 200

``analyze`` scores every variant from the stored maps (numpy only) and prints a markdown table::

    python benchmarks/quality_push.py analyze ../shared/data/imagenet-val-wsol /tmp/qp/val200

Variant names: ``{rank}{k}-{rule}[-s{sigma}]`` with ``rank`` ``g`` (guided) or ``p`` (plain).
Variants that are library rules (``sum``, ``max``, ``weighted``, ``union``, ``mean-cam`` =
``sum_cam``, ``gate_cam``) are computed by :func:`fastloc_viz.methods.combine.combine_maps`; the others
(``raw``, ``blobsum``, ``sum-x-cam``, ``gate-only``, ``camweighted``) are experiments that the
library does not offer.
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

from fastloc_viz.core import maps as M  # noqa: E402
from fastloc_viz.evaluation.metrics import LocalizationCounts, score_query  # noqa: E402
from fastloc_viz.imaging.dataset import LocalizationDataset  # noqa: E402
from fastloc_viz.methods.combine import combine_maps  # noqa: E402

SIGMA = 16.0


# ------------------------------------------------------------------------------ collect
def collect(data_dir: str, out_dir: str, limit: int | None, layer: str, k_guided: int,
            k_plain: int, batch: int) -> None:
    import torch

    from fastloc_viz import load_model
    from fastloc_viz.core.maps import blobs
    from fastloc_viz.engine import captum_maps
    from fastloc_viz.engine.neuron_passes import neuron_pass, rescore
    from fastloc_viz.imaging.batch import load_batch
    from fastloc_viz.model.bundle import as_logits
    from fastloc_viz.model.layers import resolve_layer
    from fastloc_viz.model.state import preserved

    torch.manual_seed(0)
    bundle = load_model("efficientnet_lite0")
    model = bundle.model
    layer_ref = resolve_layer(model, layer)
    data = LocalizationDataset(data_dir, limit=limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [q for q in data if not (out / f"{q.row:05d}.npz").exists()]
    start = time.perf_counter()
    for b0 in range(0, len(todo), batch):
        group = todo[b0 : b0 + batch]
        images = torch.cat([load_batch(q.load_image(), bundle.input_size) for q in group])
        x = bundle.preprocess(images)
        targets = [q.label for q in group]
        with preserved(model):
            rec: dict[str, dict[str, np.ndarray]] = {}
            for rank, k in (("guided", k_guided), ("plain", k_plain)):
                npass = neuron_pass(model, x, layer_ref, targets, k, rank, "loop", as_logits)
                m = npass.input_grads.mean(dim=2).clamp(min=0)  # N x k x H x W
                top = m.flatten(-2).amax(-1)
                rec[rank] = {
                    "maps": (m / top.clamp(min=1e-30)[..., None, None]).numpy(),
                    "max": top.numpy(),
                    "score": npass.ranked.score.numpy(),
                    "yx": torch.stack([npass.ranked.y, npass.ranked.x], -1).numpy(),
                    "logits": npass.logits.numpy(),
                }
            cam = captum_maps.gradcam(model, x, layer_ref[1], torch.tensor(targets), as_logits)
            cam = cam.mean(1).clamp(min=0).numpy()
            resc = np.stack([
                rescore(model, x[i : i + 1], blobs(rec["guided"]["maps"][i]), targets[i], as_logits)
                for i in range(len(group))
            ])
        for i, q in enumerate(group):
            g, p = rec["guided"], rec["plain"]
            np.savez_compressed(
                out / f"{q.row:05d}.npz",
                label=q.label, pred=int(g["logits"][i].argmax()),
                g_maps=g["maps"][i].astype(np.float16), g_max=g["max"][i], g_score=g["score"][i],
                g_yx=g["yx"][i], p_maps=p["maps"][i].astype(np.float16), p_max=p["max"][i],
                p_score=p["score"][i], p_yx=p["yx"][i], cam=cam[i].astype(np.float32),
                rescored=resc[i],
            )
        done = b0 + len(group)
        rate = (time.perf_counter() - start) / done
        print(f"{done}/{len(todo)} queries, {rate:.2f} s/query", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ variants
def _norm(m: np.ndarray) -> np.ndarray:
    return M.normalize(m)


def _smooth(m: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    return M.normalize(M.smooth(m, sigma))


def _rule(rule: str, maps: np.ndarray, *, sigma: float = SIGMA, scores=None, cam=None) -> np.ndarray:
    """The library's combine rule (no copy of it here)."""
    return combine_maps(maps, rule=rule, sigma=sigma, scores=scores, class_map=cam)


def variants(d: dict[str, np.ndarray]) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a thunk giving the ``H x W`` saliency of that variant for one stored query."""
    g = d["g_maps"].astype(np.float32)
    p = d["p_maps"].astype(np.float32)
    cam = d["cam"]
    camn = _norm(cam)
    h, w = cam.shape
    v: dict[str, Callable[[], np.ndarray]] = {}
    v["gradcam"] = lambda: camn  # Grad-CAM at the probe layer, as the gradcam method computes it
    ranks = {"g": (g, d["g_score"], d["g_max"], d["g_yx"]), "p": (p, d["p_score"], d["p_max"], d["p_yx"])}
    # rank gradient x k (the default combine: mean of per-neuron-normalized maps, sigma 16)
    for rank, (maps, *_rest) in ranks.items():
        for k in (1, 3, 5, 10, 20):
            if k <= len(maps):
                v[f"{rank}{k}-sum"] = lambda mk=maps[:k]: _rule("sum", mk)
    # combine rules, normalization, blobs, sigma
    for rank, k in (("g", 5), ("g", 10), ("p", 10)):
        maps, score, top, _yx = ranks[rank]
        if k > len(maps):
            continue
        mk, sk = maps[:k], score[:k]
        v[f"{rank}{k}-max"] = lambda mk=mk: _rule("max", mk)
        v[f"{rank}{k}-weighted"] = lambda mk=mk, sk=sk: _rule("weighted", mk, scores=sk)
        v[f"{rank}{k}-raw"] = lambda mk=mk, t=top[:k]: _smooth((mk * t[:, None, None]).sum(0))
        v[f"{rank}{k}-union"] = lambda mk=mk: _rule("union", mk)
        v[f"{rank}{k}-blobsum"] = lambda mk=mk: _smooth(M.blobs(mk).mean(axis=0).astype(np.float32))
        for s in (8, 24):
            v[f"{rank}{k}-sum-s{s}"] = lambda mk=mk, s=s: _rule("sum", mk, sigma=s)
    # with the class-level map of the same forward (Grad-CAM at the probe layer)
    for rank, k in (("g", 5), ("g", 10), ("g", 20), ("p", 5), ("p", 10)):
        maps, score, top, yx = ranks[rank]
        if k > len(maps):
            continue
        mk = maps[:k]
        v[f"{rank}{k}-sum-x-cam"] = lambda mk=mk: _norm(_smooth(mk.mean(0)) * camn)
        v[f"{rank}{k}-mean-cam"] = lambda mk=mk: _rule("sum_cam", mk, cam=cam)
        v[f"{rank}{k}-gate_cam"] = lambda mk=mk: _rule("gate_cam", mk, cam=cam)
        # not the library's gate_cam: gated maps alone, without the class map added
        v[f"{rank}{k}-gate-only"] = lambda mk=mk: _smooth(mk.mean(0) * camn)

        def cam_weighted(mk=mk, yx=yx[:k]):
            # each neuron map weighted by the class map at the neuron's own position
            iy = np.clip(((yx[:, 0] + 0.5) * h / 14).astype(int), 0, h - 1)
            ix = np.clip(((yx[:, 1] + 0.5) * w / 14).astype(int), 0, w - 1)
            wts = camn[iy, ix]
            wts = wts / wts.sum() if wts.sum() > 0 else np.full(len(wts), 1 / len(wts))
            return _smooth(np.tensordot(wts.astype(np.float32), mk, 1))

        v[f"{rank}{k}-camweighted"] = cam_weighted
    # the authors' rescoring: the best 5 of kmax candidates by the masked image's logit
    for kmax in (10, 20):
        if kmax > len(g):
            continue
        mk = g[np.argsort(-d["rescored"][:kmax], kind="stable")[:5]]
        v[f"g5of{kmax}-rescored-union"] = lambda mk=mk: _rule("union", mk)
        v[f"g5of{kmax}-rescored-sum"] = lambda mk=mk: _rule("sum", mk)
        v[f"g5of{kmax}-rescored-sum-x-cam"] = lambda mk=mk: _norm(_smooth(mk.mean(0)) * camn)
    return v


def add_variant(counts: dict[str, LocalizationCounts], name: str, sal: np.ndarray, gt, *, row: int,
                label: int, prediction: int, thresholds: np.ndarray) -> None:
    """Score one variant's saliency on one query (its box: threshold 0.3, largest component)."""
    box = M.map_to_box(sal, 0.3, "largest")
    r = score_query(sal, box, gt, row=row, label=label, prediction=prediction, thresholds=thresholds)
    counts.setdefault(name, LocalizationCounts(thresholds=thresholds)).add(r)


def variant_table(counts: dict[str, LocalizationCounts]) -> list[str]:
    """The markdown table of every variant's summary."""
    lines = ["| variant | MaxBoxAcc@0.3 | @0.5 | @0.7 | best t | MaxBoxAccV2 | pointing | centre in box |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in counts.items():
        s = c.summary()
        lines.append(
            f"| `{name}` | {s['maxboxacc_30']:.3f} | {s['maxboxacc_50']:.3f} | {s['maxboxacc_70']:.3f} "
            f"| {s['best_threshold_50']:.2f} | {s['maxboxacc_v2']:.3f} | {s['pointing']:.3f} "
            f"| {s['centre_in_box']:.3f} |"
        )
    return lines


def analyze(data_dir: str, store: str, thresholds: np.ndarray, only: list[str] | None,
            variants_of: Callable[[dict], dict[str, Callable[[], np.ndarray]]] = variants,
            match: Callable[[str, str], bool] = str.startswith) -> str:
    """Score every variant of every stored query; ``only``: keep names ``match``-ing one of them."""
    data = LocalizationDataset(data_dir)
    files = sorted(Path(store).glob("*.npz"))
    counts: dict[str, LocalizationCounts] = {}
    for f in files:
        row = int(f.stem)
        q = data[row]
        d = dict(np.load(f))
        gt = q.boxes_at(d["cam"].shape)
        for name, make in variants_of(d).items():
            if only and not any(match(name, o) for o in only):
                continue
            add_variant(counts, name, make(), gt, row=row, label=q.label, prediction=int(d["pred"]),
                        thresholds=thresholds)
    lines = [f"{len(files)} queries from {store}; thresholds step {thresholds[1] - thresholds[0]:.2f}", ""]
    return "\n".join(lines + variant_table(counts)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("data_dir")
    c.add_argument("store")
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--layer", default="_blocks.10")
    c.add_argument("--k-guided", type=int, default=20)
    c.add_argument("--k-plain", type=int, default=10)
    c.add_argument("--batch", type=int, default=4)
    a = sub.add_parser("analyze")
    a.add_argument("data_dir")
    a.add_argument("store")
    a.add_argument("--step", type=float, default=0.05, help="threshold step of the sweep")
    a.add_argument("--only", default=None, help="comma-separated variant name prefixes")
    args = parser.parse_args(argv)
    if args.cmd == "collect":
        collect(args.data_dir, args.store, args.limit, args.layer, args.k_guided, args.k_plain,
                args.batch)
    else:
        ts = np.round(np.arange(0, 1, args.step), 4)
        print(analyze(args.data_dir, args.store, ts, args.only.split(",") if args.only else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
