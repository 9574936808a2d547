"""``fastloc-viz evaluate``: localization metrics of several methods on a box-annotated data set
(the box-free ones, ``--metrics faithfulness,sanity``, are in :mod:`fastloc_viz.evaluation.boxfree`,
which runs the ``evaluate`` command).

Python API: :func:`evaluate`. CLI: :func:`add_arguments` + :func:`run` (registered as the
``evaluate`` subcommand; also ``python -m fastloc_viz.evaluation``).

* Every CSV row is one query: the row's label is the target (GT-known protocol).
* Deterministic: one image at a time, in file order, no randomness.
* Resumable: each query's scores are appended to a JSON-lines cache as soon as they exist;
  a rerun with the same model, method parameters, data and sweep skips the cached queries.
* Scales out under ``torchrun --nproc_per_node N``: rank ``r`` evaluates rows ``r, r + N, ...``,
  the integer counts are all-reduced (gloo on CPU, nccl on GPU) and rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import JsonLines, make_dir, write_text_atomic
from ..core.parallel import Dist, barrier, init_distributed, machine_info, peak_memory_mb
from ..imaging.dataset import LocalizationDataset, Query
from ..methods import get_method
from .metrics import (
    DEFAULT_THRESHOLDS,
    IOU_LEVELS,
    POINTING_TOLERANCE,
    LocalizationCounts,
    QueryResult,
    score_query,
)

log = logging.getLogger(__name__)

JSON_KEYS = (
    "maxboxacc_30",
    "maxboxacc_50",
    "maxboxacc_70",
    "maxboxacc_v2",
    "gt_known_loc",
    "top1_loc",
    "pointing",
    "centre_in_box",
    "sec_per_image",
)
"""The per-method keys of ``--json`` (the schema of issue 4), in order."""
BOX_FREE_KEYS = ("deletion_auc", "insertion_auc", "sanity_similarity")
"""Added to ``--json`` by ``--metrics faithfulness,sanity`` (and the list ``sanity_curve``)."""

CACHE_VERSION = 4  # bump when a method's results change for the same parameters and defaults


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodSpec:
    """A method and the keyword arguments passed to ``explain`` for it.

    ``label`` names it in the results; :func:`parse_methods` builds it from text such as
    ``fastloc[k=10,rank_grad=plain]``.
    """

    method: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.kwargs:
            return self.method
        inner = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(self.kwargs.items()))
        return f"{self.method}[{inner}]"


def _format_value(v: Any) -> str:
    return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside ``[...]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_methods(text: str) -> list[MethodSpec]:
    """``"fastloc,gradcam,fastloc[k=10,rank_grad=plain]"`` -> method specs.

    Raises:
        ValueError: a method name not in the registry (the registered ones are listed) or a
            malformed ``key=value`` list.
    """
    specs = []
    for part in _split_top_level(text):
        m = re.fullmatch(r"([A-Za-z0-9_]+)(?:\[(.*)\])?", part)
        if not m:
            raise ValueError(f"method {part!r} is not NAME or NAME[key=value,...]")
        name, inner = m.group(1), m.group(2)
        get_method(name)  # the registry's one message for an unknown name
        kwargs: dict[str, Any] = {}
        for item in _split_top_level(inner or ""):
            if "=" not in item:
                raise ValueError(f"{item!r} in method {part!r} is not key=value")
            key, value = item.split("=", 1)
            kwargs[key.strip()] = _parse_value(value)
        specs.append(MethodSpec(name, kwargs))
    if not specs:
        raise ValueError(f"no method in {text!r}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods repeat: {labels}")
    return specs


# ------------------------------------------------------------------------------- cache
class ResultCache:
    """Append-only JSON-lines store of :class:`QueryResult` for one method configuration.

    ``root/<key>/spec.json`` describes the configuration; each process appends to its own
    ``part-<rank>.jsonl`` (one line per query, flushed at once), so an interrupted run loses
    at most the query in flight. Lines that do not parse (a line cut by the interruption) or
    whose image / label no longer match the data set are ignored.
    """

    def __init__(self, root: Path, spec: dict[str, Any], rank: int = 0) -> None:
        self._store = JsonLines(root, spec, f"part-{rank}.jsonl")
        self.dir, self.path = self._store.dir, self._store.path

    def load(self, dataset: LocalizationDataset) -> dict[int, QueryResult]:
        out: dict[int, QueryResult] = {}
        by_row = {q.row: q for q in dataset}  # rows, not positions: a --rows subset is a part
        for d in self._store.rows("part-*.jsonl"):
            try:
                row = int(d["row"])
                q = by_row.get(row)
                if q is None or d["image"] != q.image.name or int(d["label"]) != q.label:
                    continue
                out[row] = QueryResult.from_dict(d)
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def append(self, query: Query, result: QueryResult) -> None:
        d = result.to_dict()
        d["image"] = query.image.name
        self._store.append(d)

    def close(self) -> None:
        self._store.close()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fastloc_viz/evaluate`` (``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastloc_viz" / "evaluate"


# ---------------------------------------------------------------------------- evaluate
def evaluate(
    bundle: Any,
    dataset: LocalizationDataset,
    methods: Sequence[MethodSpec | str],
    *,
    layer: str | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    tolerance: float = POINTING_TOLERANCE,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    dist: Dist | None = None,
    max_queries: int | None = None,
) -> dict[str, Any]:
    """Evaluate localization methods on every query of a data set.

    Args:
        bundle: a ``ModelBundle`` (from ``fastloc_viz.load_model``).
        dataset: the queries.
        methods: method names or :class:`MethodSpec` (name + ``explain`` keyword arguments).
        layer: probe layer for the methods that use one (``None``: the bundle's default).
        thresholds: the MaxBoxAcc sweep.
        tolerance: pointing-game slack in pixels.
        cache_dir: where per-query results are kept for resuming (``None``: no cache).
        progress: show a tqdm bar on stderr (rank 0 only).
        dist: this process's place in a ``torchrun`` job (``None``: single process).
        max_queries: stop after computing this many new queries (for tests of resuming; the
            results then cover only what was computed and cached).

    Returns:
        ``{"n", "model", "data", "thresholds", "iou_levels", "machine", "methods": {label:
        {**LocalizationCounts.summary(), "curves": ..., "method": ..., "params": ...}}}``;
        every rank gets the same, all-reduced numbers.
    """
    explain_fn = _explain_function()
    dist = dist or Dist()
    specs = [MethodSpec(m) if isinstance(m, str) else m for m in methods]
    thresholds = np.asarray(thresholds, dtype=np.float64)
    input_size = tuple(bundle.input_size)
    device = bundle.device
    if len(dataset) == 0:
        raise ValueError(f"the data set {dataset.csv_path} has no rows")

    caches: dict[str, ResultCache] = {}
    done: dict[str, dict[int, QueryResult]] = {}
    for spec in specs:
        done[spec.label] = {}
        if cache_dir is not None:
            key = {
                "version": CACHE_VERSION,
                "model": bundle.name,
                "method": spec.method,
                "kwargs": dict(spec.kwargs),
                # what the method does without kwargs: a changed default must not reuse rows
                "defaults": get_method(spec.method).defaults(),
                "default_layer": bundle.default_layer,
                "layer": layer,
                "input_size": list(input_size),
                "data": str(dataset.csv_path),
                "thresholds": [float(t) for t in thresholds],
                "tolerance": tolerance,
            }
            caches[spec.label] = ResultCache(Path(cache_dir), key, dist.rank)
            done[spec.label] = caches[spec.label].load(dataset)

    shard = [q for q in dataset if q.row % dist.world_size == dist.rank]
    peak: dict[str, float] = {s.label: 0.0 for s in specs}
    layers: dict[str, str | None] = {}
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        todo = sum(1 for q in shard if any(q.row not in done[s.label] for s in specs))
        bar = tqdm(total=len(shard), initial=len(shard) - todo, file=sys.stderr,
                   desc=f"evaluate {dataset.name}", unit="img", dynamic_ncols=True)
    computed = 0
    try:
        for q in shard:
            missing = [s for s in specs if q.row not in done[s.label]]
            if not missing:
                continue
            if max_queries is not None and computed >= max_queries:
                break
            image = dataset.read(q, input_size)  # the one reader, as explain reads the file
            if image is None:  # listed in dataset.skipped() with its reason
                continue
            gt = q.boxes_at(input_size)
            for spec in missing:
                kwargs = dict(spec.kwargs)
                if layer is not None and "layer" not in kwargs:
                    kwargs["layer"] = layer
                _reset_peak(device)
                start = time.perf_counter()
                exp = explain_fn(bundle, image, method=spec.method, target=q.label, **kwargs)
                elapsed = time.perf_counter() - start
                peak[spec.label] = max(peak[spec.label], peak_memory_mb(device))
                layers.setdefault(spec.label, exp.layer)
                result = score_query(
                    exp.saliency, exp.box, gt, row=q.row, label=q.label,
                    prediction=exp.top5[0].index, thresholds=thresholds, tolerance=tolerance,
                    time_s=elapsed,
                )
                done[spec.label][q.row] = result
                if spec.label in caches:
                    caches[spec.label].append(q, result)
            computed += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for cache in caches.values():
            cache.close()

    out_methods: dict[str, Any] = {}
    n_total = 0
    for spec in specs:
        counts = LocalizationCounts(thresholds=thresholds)
        for q in shard:
            if q.row in done[spec.label]:
                counts.add(done[spec.label][q.row])
        counts.peak_memory_mb = peak[spec.label]
        counts.all_reduce()
        summary = counts.summary()
        summary["curves"] = counts.curves()
        summary["method"] = spec.method
        summary["layer"] = layers.get(spec.label, "?")
        if summary["layer"] == "?":  # every query came from the cache: ask the method once
            kwargs = dict(spec.kwargs)
            if layer is not None and "layer" not in kwargs:
                kwargs["layer"] = layer
            q0 = dataset[0]
            summary["layer"] = explain_fn(bundle, q0.load_image(input_size), method=spec.method,
                                          target=q0.label, **kwargs).layer
        summary["params"] = dict(spec.kwargs)
        out_methods[spec.label] = summary
        n_total = max(n_total, counts.n)
    return {
        "n": n_total,
        "model": bundle.name,
        "data": str(dataset.csv_path),
        "layer": layer,
        "thresholds": [float(t) for t in thresholds],
        "iou_levels": list(IOU_LEVELS),
        "pointing_tolerance": tolerance,
        "world_size": dist.world_size,
        "machine": machine_info(device),
        "methods": out_methods,
        "skipped": _all_skipped(dataset, dist),
    }


def _all_skipped(dataset: LocalizationDataset, dist: Dist) -> list[dict]:
    """Every rank's unreadable files (each rank reads only its shard), by row."""
    import torch.distributed as td

    skipped = dataset.skipped()
    if dist.world_size == 1 or not (td.is_available() and td.is_initialized()):
        return skipped

    parts: list[Any] = [None] * dist.world_size
    td.all_gather_object(parts, skipped)
    return sorted((d for part in parts for d in part), key=lambda d: d["row"])


def _mib(value: float) -> str:
    """Peak memory for the table: "-" when every query came from the cache (none measured)."""
    return f"{value:.0f}" if value > 0 else "-"


def _explain_function() -> Any:
    """``fastloc_viz.explain``, looked up at call time (tests replace it)."""
    from .. import explain

    return explain


def _reset_peak(device: Any) -> None:
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ----------------------------------------------------------------------------- outputs
def json_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--json`` object: ``{"n", "model", "methods": {label: {JSON_KEYS...}}, "skipped":
    [{"row", "image", "reason"}, ...]}`` (the files that cannot be read, left out), plus
    ``deletion_auc``, ``insertion_auc``, ``sanity_similarity`` (numbers) and ``sanity_curve``
    (a list) where the box-free metrics were computed; a key is there when its metric ran."""

    def keys(m: Mapping[str, Any]) -> dict[str, Any]:
        d = {k: float(m[k]) for k in (*JSON_KEYS, *BOX_FREE_KEYS) if k in m}
        if "sanity_curve" in m:  # None: every map was constant at that depth
            d["sanity_curve"] = [None if v is None else float(v) for v in m["sanity_curve"]]
            d["sanity_constant"] = [int(v) for v in m.get("sanity_constant", [])]
        return d

    return {
        "n": int(results["n"]),
        "model": results["model"],
        "methods": {label: keys(m) for label, m in results["methods"].items()},
        "skipped": list(results.get("skipped", [])),
    }


def skipped_text(skipped: Sequence[Mapping[str, Any]]) -> str:
    """The files left out because they cannot be read, one line each (markdown), or ``""``."""
    if not skipped:
        return ""
    lines = [f"\n{len(skipped)} image file(s) left out: they cannot be read.\n"]
    lines += [f"- row {d['row']}, `{d['image']}`: {d['reason']}" for d in skipped]
    return "\n".join(lines) + "\n"


def markdown_table(results: Mapping[str, Any]) -> str:
    """A markdown table of the headline metrics, one row per method."""
    head = (
        "| method | layer | MaxBoxAcc@0.3 | @0.5 | @0.7 | best t (0.5) | MaxBoxAccV2 | GT-known loc "
        "| top-1 loc | pointing | centre in box | s/image | peak MiB |"
    )
    lines = [
        f"{results['n']} queries, model `{results['model']}`, data `{results['data']}`.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for label, m in results["methods"].items():
        lines.append(
            f"| `{label}` | {m.get('layer') or '-'} | {m['maxboxacc_30']:.3f} | {m['maxboxacc_50']:.3f} | "
            f"{m['maxboxacc_70']:.3f} | {m['best_threshold_50']:.2f} | {m['maxboxacc_v2']:.3f} | "
            f"{m['gt_known_loc']:.3f} | {m['top1_loc']:.3f} | {m['pointing']:.3f} | "
            f"{m['centre_in_box']:.3f} | {m['sec_per_image']:.3f} | {_mib(m['peak_memory_mb'])} |"
        )
    return "\n".join(lines) + "\n"


def threshold_figure(results: Mapping[str, Any]) -> Any:
    """Plotly figure: box accuracy at IoU 0.5 against the threshold, one line per method
    (solid: largest component, MaxBoxAcc; dotted: all components, MaxBoxAccV2's)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    t = results["thresholds"]
    for i, (label, m) in enumerate(results["methods"].items()):
        color = f"hsl({(i * 67) % 360},70%,45%)"
        fig.add_trace(go.Scatter(x=t, y=m["curves"]["largest_50"], name=f"{label}",
                                 line={"color": color}, legendgroup=label))
        fig.add_trace(go.Scatter(x=t, y=m["curves"]["all_50"], name=f"{label} (all comp.)",
                                 line={"color": color, "dash": "dot"}, legendgroup=label))
    fig.update_layout(
        title=f"Box accuracy (IoU >= 0.5) vs threshold: {results['model']}, n={results['n']}",
        xaxis_title="threshold (fraction of the map's maximum)",
        yaxis_title="accuracy", yaxis_range=[0, 1], template="plotly_white",
    )
    return fig


def write_outputs(results: Mapping[str, Any], out: str | Path, table: str | None = None) -> list[Path]:
    """``results.json``, ``results.md`` (``table``, default :func:`markdown_table`) and, with
    localization results, ``accuracy_vs_threshold.html`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "accuracy_vs_threshold.html"]
    write_text_atomic(paths[0], json.dumps(results, indent=1, default=str), what="results")
    write_text_atomic(paths[1], markdown_table(results) if table is None else table, what="results table")
    if not all("curves" in m for m in results["methods"].values()):
        return paths[:2]
    write_text_atomic(paths[2], threshold_figure(results).to_html(include_plotlyjs=True), what="plot")
    return paths


# --------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate`` options on ``parser``."""
    parser.add_argument("data_dir", help="directory holding annotations.csv (or a CSV path)")
    parser.add_argument("--model", default="efficientnet_lite0", help="model name (default: %(default)s)")
    parser.add_argument(
        "--methods", default="fastloc,gradcam",
        help="comma-separated methods, each NAME or NAME[key=value,...] with explain() "
        "keyword arguments, e.g. 'gradcam,fastloc[k=10,rank_grad=plain]' (default: %(default)s)",
    )
    parser.add_argument(
        "--layer", default=None,
        help="layer for every method that uses one (default: each method's own default)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument(
        "--rows", default=None,
        help="A:B, only rows A .. B-1 (0-based, as in the CSV; e.g. a held-out split 300:1000)",
    )
    parser.add_argument("--out", default=None, help="write results.json, results.md and a plot here")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument(
        "--cache", default=None,
        help="per-query cache for resuming (default: OUT/cache with --out, else "
        f"{default_cache_dir()})",
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute every query")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``fastloc-viz evaluate`` (localization only); returns the exit status."""
    dist, specs, dataset, bundle, cache = setup(args)
    results = evaluate(
        bundle, dataset, specs, layer=args.layer, cache_dir=cache,
        progress=not args.no_progress, dist=dist,
    )
    return finish(results, args, dist, markdown_table(results))


def parse_rows(text: str) -> tuple[int, int]:
    """``"A:B"`` -> ``(A, B)`` (``"A:"``: to the end, ``":B"``: from the start).

    Raises:
        ValueError: not two non-negative integers around a colon, or ``B <= A``.
    """
    a, sep, b = str(text).partition(":")
    try:
        start, stop = int(a) if a.strip() else 0, int(b) if b.strip() else 2**62
    except ValueError:
        start = stop = -1
    if not sep or start < 0 or stop <= start:
        raise ValueError(f"--rows {text!r} must be A:B with 0 <= A < B (rows A .. B-1), e.g. 300:1000")
    return start, stop


def setup(args: argparse.Namespace, boxes: bool = True) -> tuple[Dist, list[MethodSpec], LocalizationDataset, Any, Any]:
    """What a run needs from its arguments: ``(dist, specs, dataset, bundle, cache_dir)``;
    ``boxes=False`` reads data without boxes (a label-less CSV or a folder of images)."""
    import torch

    from .. import load_model

    dist = init_distributed()
    specs = parse_methods(args.methods)
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit {args.limit} must be a positive number of rows")
    dataset = LocalizationDataset(args.data_dir, limit=args.limit, boxes=boxes)
    if getattr(args, "rows", None):
        start, stop = parse_rows(args.rows)
        dataset.queries = [q for q in dataset.queries if start <= q.row < stop]
        if not dataset.queries:
            raise ValueError(f"--rows {args.rows} selects no row of {dataset.csv_path}")
    if args.out:  # fail now, not after the whole run
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(
                f"--out {args.out!r} is a file; give a directory for results.json, results.md and the plot"
            )
        make_dir(out)
    device = args.device
    if device is None:
        device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    bundle = load_model(args.model, device=device)
    cache = None
    if not args.no_cache:
        cache = args.cache or (Path(args.out) / "cache" if args.out else default_cache_dir())
    return dist, specs, dataset, bundle, cache


def finish(results: dict[str, Any], args: argparse.Namespace, dist: Dist, table: str) -> int:
    """Write the outputs (rank 0) and print the JSON or the markdown ``table``."""
    results["command"] = " ".join(sys.argv)
    table += skipped_text(results.get("skipped", []))
    if dist.is_main:
        if args.out:
            for path in write_outputs(results, args.out, table):
                log.info("wrote %s", path)
        if args.json:
            print(json.dumps(json_summary(results)))
        else:
            print(table, end="")
    barrier()
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastloc-viz evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING)
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
