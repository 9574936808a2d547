"""The per-model tables of docs/results.md from a tree of ``fastloc-viz evaluate`` runs.

Expects ``ROOT/<model>/<set>/cache`` (``evaluate --out ROOT/<model>/<set>``), e.g. sets
``single`` (ImageNet images), ``coll`` (collages, the photo's object box) and ``collq``
(collages, the photo's quadrant). For each model prints every method's MaxBoxAcc@0.5 (largest
component, wsolevaluation's), the peak's-component box accuracy at its best threshold,
MaxBoxAccV2, pointing and GT-known localization at the method's default threshold (the box a
user gets), then each method minus ``--baseline`` with a paired 95 % bootstrap interval::

    python benchmarks/results_tables.py /tmp/ho --baseline gradcam
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_bootstrap import differences, load, metrics, per_query  # noqa: E402

SHORT = {"MaxBoxAcc@0.5": "MaxBoxAcc@0.5", "peak box @0.5": "peak box", "MaxBoxAccV2": "V2",
         "pointing": "pointing", "GT-known loc": "GT-known"}


def model_tables(model_dir: Path, baseline: str, n_boot: int, seed: int) -> str:
    order = ["single", "coll", "collq"]
    sets = sorted((p.parent.name for p in model_dir.glob("*/cache")),
                  key=lambda name: (order.index(name) if name in order else len(order), name))
    scores, diffs = [], []
    for name in sets:
        runs = load(model_dir / name / "cache")
        if baseline not in runs:
            continue
        rows = sorted(set.intersection(*(set(r["results"]) for r in runs.values())))
        q = {label: per_query(r["results"], rows) for label, r in runs.items()}
        for label in sorted(runs, key=lambda label: (label != baseline, label)):
            m = metrics(q[label], np.ones((1, len(rows))))
            cells = " | ".join(f"{m[k][0]:.3f}" for k in SHORT)
            scores.append(f"| {name} ({len(rows)}) | `{label}` | {cells} |")
            if label != baseline:
                d = differences(q[label], q[baseline], n_boot, seed)
                cells = " | ".join(f"{v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for v in d.values())
                diffs.append(f"| {name} | `{label}` | {cells} |")
    head = " | ".join(SHORT.values())
    return "\n".join([
        f"### {model_dir.name}", "",
        f"| set (queries) | method | {head} |", "|---" * (2 + len(SHORT)) + "|", *scores, "",
        f"Paired difference against `{baseline}` ({n_boot} resamples, 95 % interval):", "",
        f"| set | method | {head} |", "|---" * (2 + len(SHORT)) + "|", *diffs, "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="directory of <model>/<set>/cache evaluate runs")
    parser.add_argument("--baseline", default="gradcam", help="method label to compare against")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = sorted(p for p in Path(args.root).iterdir() if p.is_dir() and any(p.glob("*/cache")))
    if not models:
        parser.error(f"no <model>/<set>/cache under {args.root}")
    for model_dir in models:
        print(model_tables(model_dir, args.baseline, args.n_boot, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
