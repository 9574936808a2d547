"""Is method A really better than method B? A paired bootstrap over the queries of one run.

Reads the per-query cache of ``fastloc-viz evaluate`` (``OUT/cache`` with ``--out``) and, for
every pair of cached method configurations on the same data, resamples the queries with
replacement (the same resample for both methods: the comparison is paired) and recomputes
MaxBoxAcc@0.5 (its best threshold re-chosen in every resample, as the metric does), the same
for the peak's component box, MaxBoxAccV2, the pointing game and GT-known localization (each
method's own box at its default threshold). Prints each difference A - B with its 95 % interval::

    python benchmarks/paired_bootstrap.py /tmp/full2/cache --a fastloc --b gradcam
    python benchmarks/paired_bootstrap.py /tmp/full2/cache --rows 200:1000   # a held-out range

``--a`` / ``--b`` match method labels as ``evaluate`` prints them (``fastloc[combine=sum]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastloc_viz.evaluation.base import MethodSpec, RowCache  # noqa: E402
from fastloc_viz.evaluation.metrics import IOU_LEVELS, QueryResult  # noqa: E402
from fastloc_viz.imaging.dataset import LocalizationDataset  # noqa: E402


def load(cache_root: Path) -> dict[str, dict]:
    """label -> {"data": csv path, "results": {row: QueryResult}} for every cached localization
    config (``cache_root/localization/<hash>``)."""
    out = {}
    for spec_path in sorted((cache_root / "localization").glob("*/spec.json")):
        spec = json.loads(spec_path.read_text())
        dataset = LocalizationDataset(Path(spec["data"]).parent)
        label = MethodSpec(spec["method"], spec["kwargs"]).label
        rows = RowCache(cache_root / "localization", spec).load(dataset)
        out[label] = {"data": spec["data"], "results": {r: QueryResult.from_dict(d) for r, d in rows.items()}}
    return out


def per_query(results: dict, rows: list[int]) -> dict[str, np.ndarray]:
    """Per query: hits at IoU 0.5 per threshold, all-component hits per level and threshold,
    pointing."""
    r = [results[i] for i in rows]
    largest = np.array([q.iou_largest for q in r])  # N x T
    every = np.array([q.iou_all for q in r])
    peak = np.array([q.iou_peak for q in r])
    return {
        "hits50": largest >= 0.5,
        "hits_peak": peak >= 0.5,
        "hits_all": np.stack([every >= level for level in IOU_LEVELS]),  # L x N x T
        "pointing": np.array([q.pointing for q in r], dtype=float),
        "gt_known": np.array([q.box_iou >= 0.5 for q in r], dtype=float),
    }


def metrics(q: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """The three metrics under ``B x N`` resampling weights (counts per query)."""
    n = weights.sum(axis=1)
    mba50 = (weights @ q["hits50"]).max(axis=1) / n
    v2 = np.mean([(weights @ h).max(axis=1) / n for h in q["hits_all"]], axis=0)
    peak = (weights @ q["hits_peak"]).max(axis=1) / n
    return {"MaxBoxAcc@0.5": mba50, "peak box @0.5": peak, "MaxBoxAccV2": v2,
            "pointing": weights @ q["pointing"] / n,
            "GT-known loc": weights @ q["gt_known"] / n}


def differences(qa: dict, qb: dict, n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """metric -> ``a``, ``b`` (on all queries), ``diff`` (A - B), ``lo`` / ``hi`` (its 95 %
    interval) and ``share`` (of resamples with A > B), for the :func:`per_query` arrays of two
    methods on the same queries, under one paired resampling."""
    n = len(qa["pointing"])
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    ones = np.ones((1, n))
    full_a, full_b = metrics(qa, ones), metrics(qb, ones)
    boot_a, boot_b = metrics(qa, weights), metrics(qb, weights)
    out = {}
    for name in full_a:
        diff = boot_a[name] - boot_b[name]
        lo, hi = np.percentile(diff, [2.5, 97.5])
        a, b = float(full_a[name][0]), float(full_b[name][0])
        out[name] = {"a": a, "b": b, "diff": a - b, "lo": lo, "hi": hi, "share": float(np.mean(diff > 0))}
    return out


def compare(a: dict, b: dict, rows: list[int], n_boot: int, seed: int) -> list[str]:
    d = differences(per_query(a, rows), per_query(b, rows), n_boot, seed)
    return [
        f"| {name} | {v['a']:.3f} | {v['b']:.3f} | {v['diff']:+.3f} | [{v['lo']:+.3f}, {v['hi']:+.3f}] | "
        f"{v['share']:.2f} |"
        for name, v in d.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="the evaluate cache directory (OUT/cache)")
    parser.add_argument("--a", required=True, help="method label A")
    parser.add_argument("--b", required=True, help="method label B")
    parser.add_argument("--rows", default=None, help="row range START:STOP (default: every row both have)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = load(Path(args.cache))
    for label in (args.a, args.b):
        if label not in runs:
            parser.error(f"no cached results for {label!r}; the cache has {sorted(runs)}")
    a, b = runs[args.a], runs[args.b]
    if a["data"] != b["data"]:
        parser.error(f"{args.a} ran on {a['data']}, {args.b} on {b['data']}: not paired")
    rows = sorted(set(a["results"]) & set(b["results"]))
    if args.rows:
        start, stop = (int(v) for v in args.rows.split(":"))
        rows = [r for r in rows if start <= r < stop]
    if not rows:
        parser.error("no query has results for both methods in that range")
    print(f"{args.a} (A) vs {args.b} (B): {len(rows)} paired queries, {args.n_boot} resamples\n")
    print("| metric | A | B | A - B | 95 % interval | share of resamples A > B |")
    print("|---|---|---|---|---|---|")
    print("\n".join(compare(a["results"], b["results"], rows, args.n_boot, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
