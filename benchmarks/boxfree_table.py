"""The box-free table of docs/results.md, with paired 95 % bootstrap intervals.

Reads the cache of ``fastloc-viz evaluate --metrics faithfulness,sanity --out OUT`` (``OUT/cache``)
and prints, per method, the mean deletion AUC, insertion AUC and randomization similarity
(Spearman at full randomization) over the images every method has, each with a 95 %
percentile-bootstrap interval, then each method minus a reference method (``--ref``, default
``fastloc``) with a *paired* interval (the same resample of images for both), and the cost
per image::

    python benchmarks/boxfree_table.py /tmp/faith_run/out/cache --ref fastloc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastloc_viz.evaluation.boxfree import per_query  # noqa: E402

COLUMNS = (("faithfulness", "deletion_auc", "deletion AUC (lower better)"),
           ("faithfulness", "insertion_auc", "insertion AUC (higher better)"),
           ("sanity", "similarity", "randomization similarity (lower better)"))


def bootstrap(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` resampled means of each column of ``values`` (``N x M``), the same
    resample of rows for every column (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)  # n_boot x M


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="the evaluate cache directory (OUT/cache)")
    parser.add_argument("--ref", default="fastloc", help="reference method for the paired differences")
    parser.add_argument("--n-boot", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = {metric: per_query(args.cache, metric) for metric in ("faithfulness", "sanity")}
    labels = list(data["faithfulness"] or data["sanity"])
    lines, diffs = [], []
    head = "| method | " + " | ".join(c[2] for c in COLUMNS) + " | s/image faithfulness | s/image sanity |"
    lines += [head, "|" + "---|" * (len(COLUMNS) + 3)]
    cells = {label: [] for label in labels}
    cost = {label: [] for label in labels}
    counts = {}
    for metric, key, _ in COLUMNS:
        runs = data[metric]
        rows = sorted(set.intersection(*(set(runs.get(lb, {})) for lb in labels))) if runs else []
        # a map that is constant on the randomized model has no correlation (None): such an
        # image is left out for every method (as evaluate and method_table.py do), not a nan mean
        rows = [r for r in rows if all(runs[lb][r].get(key) is not None for lb in labels)]
        counts[metric] = len(rows)
        if not rows:
            for label in labels:
                cells[label].append("-")
            continue
        values = np.array([[runs[lb][r][key] for lb in labels] for r in rows], dtype=float)
        boot = bootstrap(values, args.n_boot, args.seed)
        for j, label in enumerate(labels):
            lo, hi = np.percentile(boot[:, j], [2.5, 97.5])
            cells[label].append(f"{values[:, j].mean():.3f} [{lo:.3f}, {hi:.3f}]")
        if args.ref in labels:
            r = labels.index(args.ref)
            for j, label in enumerate(labels):
                if j != r:
                    d = boot[:, r] - boot[:, j]
                    lo, hi = np.percentile(d, [2.5, 97.5])
                    diffs.append(f"| {key} | `{args.ref}` - `{label}` | {values[:, r].mean() - values[:, j].mean():+.3f} "
                                 f"| [{lo:+.3f}, {hi:+.3f}] | {np.mean(d > 0):.2f} |")
    for label in labels:
        for metric in ("faithfulness", "sanity"):
            rows = data[metric].get(label, {})
            cost[label].append(f"{np.mean([d['time_s'] for d in rows.values()]):.1f}" if rows else "-")
        lines.append(f"| `{label}` | " + " | ".join(cells[label]) + " | " + " | ".join(cost[label]) + " |")
    print(f"faithfulness: {counts.get('faithfulness', 0)} images with every method; "
          f"sanity: {counts.get('sanity', 0)}; {args.n_boot} bootstrap resamples\n")
    print("\n".join(lines))
    if diffs:
        print("\n| metric | difference | value | paired 95 % interval | share of resamples > 0 |")
        print("|---|---|---|---|---|")
        print("\n".join(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
