"""The box-free metrics of ``fastloc-viz evaluate --metrics faithfulness,sanity``.

Per method and query (one image, the row's label as target, or the top-1 class when the data
have no labels):

* ``faithfulness``: the deletion and insertion curves of the method's map
  (:mod:`fastloc_viz.evaluation.faithfulness`; deletion from the mean colour, insertion from the blur)
  and their areas;
* ``sanity``: the cascading model-randomization check (:mod:`fastloc_viz.evaluation.sanity`), the
  Spearman / SSIM / HOG similarity at each depth computed.

Deterministic (one image at a time, in file order, a fixed randomization seed) and resumable:
each query's numbers are appended to a JSON-lines cache as soon as they exist, under a key
that holds the model, the method's parameters and defaults, the data and the metric's
settings; a rerun skips what is cached.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import JsonLines, read_json_lines
from ..core.parallel import machine_info
from ..imaging.dataset import LocalizationDataset, Query
from ..methods import get_method

METRICS = ("localization", "faithfulness", "sanity")
CACHE_VERSION = 1


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"localization,faithfulness"`` -> the metric names, checked, in :data:`METRICS` order."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad or text!r}; choose from {list(METRICS)}")
    return tuple(m for m in METRICS if m in names)


class RowCache:
    """Append-only JSON-lines store of one dict per query, for one configuration."""

    def __init__(self, root: Path, spec: dict[str, Any]) -> None:
        self._store = JsonLines(root, spec)
        self.dir, self.path = self._store.dir, self._store.path

    def load(self, dataset: LocalizationDataset) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for d in self._store.rows():
            try:
                row = int(d["row"])
            except (ValueError, KeyError, TypeError):
                continue
            if 0 <= row < len(dataset) and d.get("image") == _image_key(dataset, dataset[row]) \
                    and d.get("label") == dataset[row].label:
                out[row] = d
        return out

    def append(self, d: dict) -> None:
        self._store.append(d)

    def close(self) -> None:
        self._store.close()


def _image_key(dataset: LocalizationDataset, q: Query) -> str:
    try:
        return str(q.image.relative_to(dataset.root))
    except ValueError:
        return str(q.image)


def evaluate_box_free(
    bundle: Any,
    dataset: LocalizationDataset,
    specs: Sequence[Any],
    *,
    metrics: Sequence[str] = ("faithfulness", "sanity"),
    layer: str | None = None,
    steps: int = 16,
    sanity_depths: Sequence[int] | None = None,
    sanity_limit: int | None = None,
    level: str = "blocks",
    seed: int = 42,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    max_queries: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Faithfulness and / or sanity of each method over the data set.

    Args:
        bundle: a ``ModelBundle``.
        dataset: the queries (boxes not needed).
        specs: :class:`~fastloc_viz.evaluation.localization.MethodSpec` (or method names).
        metrics: ``"faithfulness"`` and / or ``"sanity"``.
        layer: probe layer for the methods that use one.
        steps: deletion / insertion steps.
        sanity_depths: randomization depths to compute (``None``: all; full randomization is
            always included).
        sanity_limit: the sanity check only on the first ``sanity_limit`` queries (it costs a
            map per method and depth).
        level: what one randomization depth is (``"blocks"`` or ``"modules"``).
        seed: the randomization seed.
        cache_dir: per-query cache for resuming (``None``: none).
        progress: a tqdm bar on stderr.
        max_queries: stop after computing this many new queries (tests of resuming).

    Returns:
        ``{label: {"deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve",
        "fractions", "n_faithfulness", "sec_per_image_faithfulness", "sanity_similarity",
        "sanity_curve", "sanity_ssim", "sanity_hog", "sanity_depths", "sanity_groups",
        "sanity_constant", "n_sanity", "sec_per_image_sanity"}}`` (the keys of the metrics asked
        for). A constant map has no rank correlation: ``sanity_constant`` counts them per depth,
        and the curves average each depth over the other images only (``None``: no image left).
    """
    from .faithfulness import faithfulness, step_counts
    from .localization import MethodSpec, _explain_function
    from .sanity import sanity_check

    explain = _explain_function()
    specs = [MethodSpec(s) if isinstance(s, str) else s for s in specs]
    metrics = [m for m in metrics if m != "localization"]
    settings = {
        "faithfulness": {"steps": steps, "deletion": "mean", "insertion": "blur"},
        "sanity": {"depths": None if sanity_depths is None else sorted(set(sanity_depths)), "level": level,
                   "seed": seed},
    }
    caches: dict[tuple[str, str], RowCache] = {}
    done: dict[tuple[str, str], dict[int, dict]] = {}
    for spec in specs:
        for metric in metrics:
            key = (spec.label, metric)
            done[key] = {}
            if cache_dir is not None:
                caches[key] = RowCache(Path(cache_dir) / metric, {
                    "version": CACHE_VERSION, "model": bundle.name, "method": spec.method,
                    "kwargs": dict(spec.kwargs), "defaults": get_method(spec.method).defaults(),
                    "default_layer": bundle.default_layer, "layer": layer,
                    "input_size": list(bundle.input_size), "data": str(dataset.csv_path), **settings[metric],
                })
                done[key] = caches[key].load(dataset)

    def wanted(q: Query, metric: str) -> bool:
        return metric != "sanity" or sanity_limit is None or q.row < sanity_limit

    todo = [q for q in dataset if any(wanted(q, m) and q.row not in done[(s.label, m)]
                                      for s in specs for m in metrics)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), initial=len(dataset) - len(todo), file=sys.stderr,
                   desc=f"{'+'.join(metrics)} {dataset.name}", unit="img", dynamic_ncols=True)
    try:
        for n, q in enumerate(todo):
            if max_queries is not None and n >= max_queries:
                break
            image = dataset.read(q, bundle.input_size)  # the one reader, as explain reads the file
            if image is None:  # listed in dataset.skipped() with its reason
                if bar is not None:
                    bar.update(1)
                continue
            for spec in specs:
                kwargs = dict(spec.kwargs)
                if layer is not None and "layer" not in kwargs:
                    kwargs["layer"] = layer
                base = {"row": q.row, "image": _image_key(dataset, q), "label": q.label}
                e = None  # the trained model's explanation, shared by both metrics
                key = (spec.label, "faithfulness")
                if key in done and q.row not in done[key]:
                    t = time.perf_counter()
                    e = explain(bundle, image, method=spec.method, target=q.label, **kwargs)
                    curves = faithfulness(bundle, image, e.saliency, target=e.target, steps=steps)
                    d = {**base, "target": e.target, "time_s": time.perf_counter() - t,
                         **{f"{k}_auc": c.auc for k, c in curves.items()},
                         **{k: c.probs.tolist() for k, c in curves.items()}}
                    done[key][q.row] = d
                    if key in caches:
                        caches[key].append(d)
                key = (spec.label, "sanity")
                if key in done and q.row not in done[key] and wanted(q, "sanity"):
                    t = time.perf_counter()
                    r = sanity_check(bundle, image, methods=[spec.method], target=q.label,
                                     level=level, depths=sanity_depths, seed=seed, explain_kwargs=kwargs,
                                     originals=None if e is None else {spec.method: e})[spec.method]
                    d = {**base, "target": r.target, "time_s": time.perf_counter() - t, **r.to_dict()}
                    done[key][q.row] = d
                    if key in caches:
                        caches[key].append(d)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for c in caches.values():
            c.close()
    h, w = bundle.input_size
    fractions = (step_counts(h * w, steps) / (h * w)).tolist()
    return {spec.label: _summary(spec.label, metrics, done, fractions) for spec in specs}


def _summary(label: str, metrics: Sequence[str], done: dict, fractions: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "faithfulness" in metrics:
        rows = [done[(label, "faithfulness")][r] for r in sorted(done[(label, "faithfulness")])]
        out["n_faithfulness"] = len(rows)
        out["fractions"] = fractions
        for kind in ("deletion", "insertion"):
            out[f"{kind}_auc"] = float(np.mean([d[f"{kind}_auc"] for d in rows])) if rows else float("nan")
            out[f"{kind}_curve"] = np.mean([d[kind] for d in rows], axis=0).tolist() if rows else []
        out["sec_per_image_faithfulness"] = float(np.mean([d["time_s"] for d in rows])) if rows else float("nan")
    if "sanity" in metrics:
        rows = [done[(label, "sanity")][r] for r in sorted(done[(label, "sanity")])]
        out["n_sanity"] = len(rows)
        for k in ("spearman", "ssim", "hog"):
            name = "sanity_curve" if k == "spearman" else f"sanity_{k}"
            out[name] = _mean_defined([d[k] for d in rows]) if rows else []
        # a constant map has no rank correlation: counted here, left out of the means above
        out["sanity_constant"] = np.sum([d.get("constant", [False] * len(d["spearman"])) for d in rows],
                                        axis=0).astype(int).tolist() if rows else []
        last = out["sanity_curve"][-1] if rows else None
        out["sanity_similarity"] = float("nan") if last is None else last
        out["sanity_depths"] = rows[0]["depths"] if rows else []
        out["sanity_groups"] = rows[0]["groups"] if rows else []
        out["sec_per_image_sanity"] = float(np.mean([d["time_s"] for d in rows])) if rows else float("nan")
    return out


def _mean_defined(curves: list[list[float | None]]) -> list[float | None]:
    """The mean curve over the rows, each depth over the rows where it is defined (a
    constant map's ``None`` / NaN left out); ``None`` where no row has a value."""
    a = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=float)
    n = np.isfinite(a).sum(axis=0)
    sums = np.where(np.isfinite(a), a, 0.0).sum(axis=0)
    return [float(s / k) if k else None for s, k in zip(sums, n)]


def per_query(cache_dir: str | Path, metric: str) -> dict[str, dict[int, dict]]:
    """Every cached configuration of ``metric`` under an evaluate cache: ``{label: {row: d}}``,
    in registry order (for paired intervals, ``benchmarks/boxfree_table.py``). Where one
    method was run with several settings (say, other sanity depths), the one with the most
    rows."""
    from ..methods import METHODS
    from .localization import MethodSpec

    out: dict[str, dict[int, dict]] = {}
    for spec_path in sorted((Path(cache_dir) / metric).glob("*/spec.json")):
        spec = json.loads(spec_path.read_text())
        label = MethodSpec(spec["method"], spec["kwargs"]).label
        rows: dict[int, dict] = {}
        for d in read_json_lines(spec_path.parent, "rows.jsonl"):
            try:
                rows[int(d["row"])] = d
            except (ValueError, KeyError, TypeError):
                continue
        if len(rows) > len(out.get(label, {})):  # several settings of one method: the fullest
            out[label] = rows
    order = list(METHODS)
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0].split("[")[0])
                                                    if kv[0].split("[")[0] in order else len(order), kv[0])))


def add_arguments(parser: Any) -> None:
    """The options of ``fastloc-viz evaluate``: localization's and the box-free ones."""
    from .localization import add_arguments as localization_arguments

    localization_arguments(parser)
    parser.add_argument(
        "--metrics", default="localization",
        help="comma-separated: localization (needs boxes), faithfulness (deletion / insertion), "
        "sanity (model randomization); faithfulness and sanity work on any CSV or folder of "
        "images (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=16, help="deletion / insertion steps (default: %(default)s)")
    parser.add_argument("--sanity-depths", default=None,
                        help="randomization depths to compute, e.g. 1,3,6,11 (default: all; full is always added)")
    parser.add_argument("--sanity-limit", type=int, default=None,
                        help="the sanity check on the first N images only (default: all)")


def run(args: Any) -> int:
    """Run ``fastloc-viz evaluate`` with ``--metrics``; returns the exit status."""
    from . import localization as ev

    metrics = parse_metrics(args.metrics)
    dist, specs, dataset, bundle, cache = ev.setup(args, boxes="localization" in metrics)
    progress = not args.no_progress and dist.is_main
    if "localization" in metrics:
        results = ev.evaluate(bundle, dataset, specs, layer=args.layer, cache_dir=cache,
                              progress=not args.no_progress, dist=dist)
    else:
        results = {"n": len(dataset), "model": bundle.name, "data": str(dataset.csv_path), "layer": args.layer,
                   "machine": machine_info(bundle.device),
                   "methods": {s.label: {"method": s.method, "params": dict(s.kwargs)} for s in specs}}
    if set(metrics) - {"localization"}:  # one process: the box-free metrics are not sharded
        depths = None if not args.sanity_depths else [int(v) for v in args.sanity_depths.split(",")]
        extra = evaluate_box_free(
            bundle, dataset, specs, metrics=metrics, layer=args.layer, steps=args.steps,
            sanity_depths=depths, sanity_limit=args.sanity_limit, cache_dir=cache, progress=progress,
        )
        for label, d in extra.items():
            results["methods"][label].update(d)
    results["metrics"] = list(metrics)
    seen = {d["row"]: d for d in [*results.get("skipped", []), *dataset.skipped()]}  # every rank's, with localization
    results["skipped"] = [seen[r] for r in sorted(seen)]
    if "localization" not in metrics:
        results["n"] = len(dataset) - len(results["skipped"])
    table = (ev.markdown_table(results) + "\n" if "localization" in metrics else "")
    table += markdown_table(results) if set(metrics) - {"localization"} else ""
    return ev.finish(results, args, dist, table)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastloc_viz.evaluation.boxfree``: the same as ``fastloc-viz evaluate``."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="fastloc-viz evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING)
    return run(parser.parse_args(None if argv is None else list(argv)))


def markdown_table(results: dict[str, Any]) -> str:
    """A markdown table of the box-free metrics, one row per method."""
    lines = ["| method | deletion AUC (lower is better) | insertion AUC (higher) | randomization "
             "similarity (Spearman, lower is better) | constant maps (no correlation, left out) "
             "| s/image faithfulness | s/image sanity |",
             "|---|---|---|---|---|---|---|"]
    for label, m in results["methods"].items():
        def f(key: str, fmt: str = ".3f") -> str:
            return format(m[key], fmt) if key in m else "-"

        constant = f"{m['sanity_constant'][-1]} of {m['n_sanity']}" if m.get("sanity_constant") else "-"
        lines.append(f"| `{label}` | {f('deletion_auc')} | {f('insertion_auc')} | {f('sanity_similarity')} "
                     f"| {constant} | {f('sec_per_image_faithfulness', '.2f')} | {f('sec_per_image_sanity', '.2f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
