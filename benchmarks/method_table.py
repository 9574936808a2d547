"""docs/results.md's one table of every method: localization on single images and on class
queries in collages, faithfulness, randomization sanity, time, with paired 95 % intervals
against a reference method (FastLoc by default).

Reads the caches of ``fastloc-viz evaluate`` runs (``--out DIR`` keeps them in ``DIR/cache``):
``--single`` and ``--coll`` hold localization runs (single images; collage class queries),
``--boxfree`` a ``--metrics faithfulness,sanity`` run. Each method is compared with the
reference on the queries *both* have (a costly method may have been run on fewer), and the
table says how many (for the randomization similarity: the images where neither map is
constant on the randomized model; a constant map has no correlation and is left out, as
``evaluate`` does). Per cell: the method's score on those queries, then (below) its
difference from the reference with a paired percentile-bootstrap 95 % interval (the same
resample of queries for both methods; MaxBoxAcc's threshold re-chosen in every resample).
GT-known localization is read at each method's *current* default threshold (the registry's)
from the cached peak-component curve, which is the box ``explain`` gives at that threshold
(the same map, component rule and IoU), so a default chosen after the run is honoured::

    python benchmarks/method_table.py --single /tmp/ho/single/cache --coll /tmp/ho/coll/cache \\
        --boxfree /tmp/ho/boxfree/cache --ref fastloc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_bootstrap import differences, per_query  # noqa: E402

from fastloc_viz.core.files import read_json_lines  # noqa: E402
from fastloc_viz.evaluation.base import MethodSpec  # noqa: E402
from fastloc_viz.evaluation.boxfree import per_query as boxfree_rows  # noqa: E402
from fastloc_viz.evaluation.metrics import QueryResult  # noqa: E402
from fastloc_viz.methods import METHODS  # noqa: E402

BOX_FREE_DIRS = ("faithfulness", "sanity")
LOCALIZATION = (("MaxBoxAcc@0.5", "MaxBoxAcc@0.5"), ("GT-known loc", "GT-known"), ("pointing", "pointing"))
BOX_FREE = (("faithfulness", "deletion_auc", "deletion AUC ↓"), ("faithfulness", "insertion_auc", "insertion AUC ↑"),
            ("sanity", "similarity", "randomization similarity ↓"))


def _cell(value: float, diff: tuple[float, float, float] | None) -> str:
    if diff is None:
        return f"{value:.3f}"
    d, lo, hi = diff
    return f"{value:.3f}<br><sub>{d:+.3f} [{lo:+.3f}, {hi:+.3f}]</sub>"


def load(cache: Path) -> dict[str, dict]:
    """label -> ``{"results": {row: QueryResult}}`` for every localization configuration under
    ``cache`` (``cache/localization/<hash>``, and the flat ``cache/<hash>`` of caches written
    before the evaluation runner); where a method has several, the one with the most rows."""
    out: dict[str, dict] = {}
    for spec_path in sorted(Path(cache).glob("**/spec.json")):
        spec = json.loads(spec_path.read_text())
        if spec.get("metric", "localization") != "localization" or spec_path.parent.parent.name in BOX_FREE_DIRS:
            continue
        rows = {}
        for d in read_json_lines(spec_path.parent, "part-*.jsonl"):
            if "iou_largest" in d:
                rows[int(d["row"])] = QueryResult.from_dict(d)
        label = MethodSpec(spec["method"], spec["kwargs"]).label
        if len(rows) > len(out.get(label, {}).get("results", {})):
            out[label] = {"results": rows}
    return out


def _queries(results: dict, rows: list[int], label: str) -> dict[str, np.ndarray]:
    """:func:`paired_bootstrap.per_query`, GT-known at the method's default threshold."""
    q = per_query(results, rows)
    method = METHODS.get(label.split("[", 1)[0])
    if method is not None and "threshold" not in label:
        i = int(round(method.defaults()["threshold"] * 100))  # the sweep is 0.00, 0.01, ..., 0.99
        q["gt_known"] = np.array([results[r].iou_peak[i] >= 0.5 for r in rows], dtype=float)
    return q


def localization_cells(cache: Path, ref: str, n_boot: int, seed: int) -> dict[str, tuple[int, list[str], float]]:
    """label -> (queries, the three cells, mean seconds per image) from one localization cache."""
    runs = load(cache)
    out = {}
    for label, run in runs.items():
        base = runs.get(ref)
        rows = sorted(set(run["results"]) & set(base["results"])) if base else sorted(run["results"])
        qa = _queries(run["results"], rows, label)
        if base is not None and label != ref:
            d = differences(qa, _queries(base["results"], rows, ref), n_boot, seed)
            cells = [_cell(d[k]["a"], (d[k]["diff"], d[k]["lo"], d[k]["hi"])) for k, _ in LOCALIZATION]
        else:
            d = differences(qa, qa, 1, seed)
            cells = [_cell(d[k]["a"], None) for k, _ in LOCALIZATION]
        out[label] = (len(rows), cells, float(np.mean([run["results"][r].time_s for r in rows])))
    return out


def box_free_cells(cache: Path, ref: str, n_boot: int, seed: int) -> dict[str, tuple[dict[str, int], list[str]]]:
    """label -> ({metric: queries}, the three cells) from one box-free cache."""
    data = {metric: boxfree_rows(cache, metric) for metric in ("faithfulness", "sanity")}
    labels = list(dict.fromkeys([*data["faithfulness"], *data["sanity"]]))
    rng = np.random.default_rng(seed)
    out = {label: ({}, []) for label in labels}
    for metric, key, _ in BOX_FREE:
        runs = data[metric]
        for label in labels:
            mine, theirs = runs.get(label, {}), runs.get(ref, {})
            rows = sorted(set(mine) & set(theirs)) if label != ref and theirs else sorted(mine)
            # a map that is constant on the randomized model has no correlation (None): such an
            # image is left out of the mean (as evaluate does) and out of the pair
            rows = [r for r in rows if mine[r].get(key) is not None
                    and (label == ref or not theirs or theirs[r].get(key) is not None)]
            out[label][0][metric] = len(rows)
            if not rows:
                out[label][1].append("-")
                continue
            a = np.array([mine[r][key] for r in rows], dtype=float)
            if label == ref or not theirs:
                out[label][1].append(_cell(a.mean(), None))
                continue
            b = np.array([theirs[r][key] for r in rows], dtype=float)
            idx = rng.integers(0, len(rows), size=(n_boot, len(rows)))
            boot = (a[idx] - b[idx]).mean(axis=1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            out[label][1].append(_cell(a.mean(), (a.mean() - b.mean(), lo, hi)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", required=True, type=Path, help="localization cache, single images")
    parser.add_argument("--coll", type=Path, default=None, help="localization cache, collage class queries")
    parser.add_argument("--boxfree", type=Path, default=None, help="faithfulness / sanity cache")
    parser.add_argument("--ref", default="fastloc", help="the reference method (default: %(default)s)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    single = localization_cells(args.single, args.ref, args.n_boot, args.seed)
    coll = localization_cells(args.coll, args.ref, args.n_boot, args.seed) if args.coll else {}
    free = box_free_cells(args.boxfree, args.ref, args.n_boot, args.seed) if args.boxfree else {}
    order = [m for m in METHODS if m in single] + [m for m in single if m not in METHODS]
    head = ["method", "images", *(t for _, t in LOCALIZATION)]
    if coll:
        head += ["collage queries", "collage MaxBoxAcc@0.5", "collage GT-known loc", "collage pointing"]
    if free:
        head += ["images (faith. / sanity)", *(t for _, _, t in BOX_FREE)]
    head.append("s / image")
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for label in order:
        n, cells, sec = single[label]
        row = [f"`{label}`", str(n), *cells]
        if coll:
            cn, ccells, _ = coll.get(label, (0, ["-", "-", "-"], 0.0))
            row += [str(cn), *ccells]
        if free:
            counts, fcells = free.get(label, ({}, ["-"] * len(BOX_FREE)))
            row += [f"{counts.get('faithfulness', 0)} / {counts.get('sanity', 0)}", *fcells]
        row.append(f"{sec:.2f}")
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
