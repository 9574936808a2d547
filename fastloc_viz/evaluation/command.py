"""``fastloc-viz evaluate``: the options, the run and its outputs (``python -m fastloc_viz.evaluation``
is the same command, through the same parser).

The ``fastloc-viz`` command registers :func:`add_arguments` as its ``evaluate`` subcommand and
calls :func:`run`, passing in the figure pages (the plots live in :mod:`fastloc_viz.views`,
above this package). Under ``torchrun`` every rank runs its share and rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.files import make_dir, write_text_atomic
from ..core.parallel import Dist, barrier, init_distributed
from ..imaging.dataset import LocalizationDataset
from ..methods import defaults_text
from . import boxfree, localization
from .base import MethodSpec, Metric, parse_methods
from .boxfree import BOX_FREE_KEYS, Faithfulness, Sanity
from .localization import JSON_KEYS, Localization
from .runner import evaluate, parse_metrics

log = logging.getLogger(__name__)

Pages = Callable[[Mapping[str, Any]], Mapping[str, str]]
"""results -> ``{file name: self-contained HTML}``: one plot per metric family in the results."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fastloc_viz/evaluate`` (``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastloc_viz" / "evaluate"


# --------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate`` options on ``parser``."""
    parser.add_argument("data_dir", help="directory holding annotations.csv (or a CSV path; a folder of images "
                        "for faithfulness and sanity)")
    parser.add_argument("--model", default="efficientnet_lite0", help="model name (default: %(default)s)")
    parser.add_argument(
        "--methods", default="fastloc,gradcam",
        help="comma-separated methods, each NAME or NAME[key=value,...] with explain() "
        "keyword arguments, e.g. 'gradcam,fastloc[k=10,rank_grad=plain]'; 'all': every registered "
        "method; what is not given is the method's own default (box threshold: "
        f"{defaults_text('threshold')}) (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics", default="localization",
        help="comma-separated: localization (needs boxes), faithfulness (deletion / insertion), "
        "sanity (model randomization); faithfulness and sanity work on any CSV or folder of "
        "images (default: %(default)s)",
    )
    parser.add_argument("--layer", default=None,
                        help="layer for every method that uses one (default: each method's own default)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--rows", default=None,
                        help="A:B, only rows A .. B-1 (0-based, as in the CSV; e.g. a held-out split 300:1000)")
    parser.add_argument("--steps", type=int, default=16, help="deletion / insertion steps (default: %(default)s)")
    parser.add_argument("--sanity-depths", default=None,
                        help="randomization depths to compute, e.g. 1,3,6,11 (default: all; full is always added)")
    parser.add_argument("--sanity-limit", type=int, default=None,
                        help="the sanity check on the first N images only (default: all)")
    parser.add_argument("--out", default=None,
                        help="write results.json, results.md and one plot per metric family here")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--cache", default=None,
                        help=f"per-query cache for resuming (default: OUT/cache with --out, else {default_cache_dir()})")
    parser.add_argument("--no-cache", action="store_true", help="recompute every query")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def metric_objects(args: argparse.Namespace) -> list[Metric]:
    """The metric objects ``--metrics`` asks for, with their options."""
    depths = None if not args.sanity_depths else [int(v) for v in args.sanity_depths.split(",")]
    make = {"localization": Localization, "faithfulness": lambda: Faithfulness(steps=args.steps),
            "sanity": lambda: Sanity(depths=depths, limit=args.sanity_limit)}
    return [make[name]() for name in parse_metrics(args.metrics)]


def _dataset(args: argparse.Namespace, boxes: bool) -> LocalizationDataset:
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit {args.limit} must be a positive number of rows")
    dataset = LocalizationDataset(args.data_dir, limit=args.limit, boxes=boxes)
    if args.rows:
        start, stop = parse_rows(args.rows)
        dataset.queries = [q for q in dataset.queries if start <= q.row < stop]
        if not dataset.queries:
            raise ValueError(f"--rows {args.rows} selects no row of {dataset.csv_path}")
    return dataset


def _check_out(out: str | None) -> None:
    """Fail now, not after the whole run."""
    if out:
        if Path(out).exists() and not Path(out).is_dir():
            raise NotADirectoryError(f"--out {out!r} is a file; give a directory for results.json, results.md and the plots")
        make_dir(Path(out))


# --------------------------------------------------------------------------------- run
def run(args: argparse.Namespace, *, pages: Pages | None) -> int:
    """Run ``fastloc-viz evaluate``; ``pages`` draws the plots written with ``--out``. Returns the
    exit status."""
    import torch

    from .. import load_model

    dist = init_distributed()
    specs: list[MethodSpec] = parse_methods(args.methods)
    metrics = metric_objects(args)
    dataset = _dataset(args, boxes=any(m.needs_boxes for m in metrics))
    _check_out(args.out)
    device = args.device or (f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    bundle = load_model(args.model, device=device)
    cache = None
    if not args.no_cache:
        cache = args.cache or (Path(args.out) / "cache" if args.out else default_cache_dir())
    results = evaluate(bundle, dataset, specs, metrics=metrics, layer=args.layer, cache_dir=cache,
                       progress=not args.no_progress, dist=dist)
    return finish(results, args, dist, pages)


def markdown_tables(results: Mapping[str, Any]) -> str:
    """Localization's table, then the box-free one, for the metrics in ``results``; then the
    files left out."""
    names = results["metrics"]
    parts = [localization.markdown_table(results)] if "localization" in names else []
    if set(names) - {"localization"}:
        parts.append(boxfree.markdown_table(results))
    return "\n".join(parts) + skipped_text(results.get("skipped", []))


def skipped_text(skipped: Sequence[Mapping[str, Any]]) -> str:
    """The files left out because they cannot be read, one line each (markdown), or ``""``."""
    if not skipped:
        return ""
    lines = [f"\n{len(skipped)} image file(s) left out: they cannot be read.\n"]
    lines += [f"- row {d['row']}, `{d['image']}`: {d['reason']}" for d in skipped]
    return "\n".join(lines) + "\n"


def finish(results: dict[str, Any], args: argparse.Namespace, dist: Dist, pages: Pages | None) -> int:
    """Write the outputs (rank 0) and print the JSON or the markdown tables."""
    results["command"] = " ".join(sys.argv)
    if dist.is_main:
        table = markdown_tables(results)
        if args.out:
            for path in write_outputs(results, args.out, table, pages):
                log.info("wrote %s", path)
        if args.json:
            print(json.dumps(json_summary(results)))
        else:
            print(table, end="")
    barrier()
    return 0


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


def write_outputs(results: Mapping[str, Any], out: str | Path, table: str | None = None,
                  pages: Pages | None = None) -> list[Path]:
    """``results.json``, ``results.md`` (``table``, default :func:`markdown_tables`) and each of
    ``pages(results)`` (a plot per metric family) into ``out``, each atomically."""
    out = make_dir(Path(out))
    paths = [out / "results.json", out / "results.md"]
    write_text_atomic(paths[0], json.dumps(results, indent=1, default=str), what="results")
    write_text_atomic(paths[1], markdown_tables(results) if table is None else table, what="results table")
    for name, html in (pages(results) if pages is not None else {}).items():
        paths.append(write_text_atomic(out / name, html, what="plot"))
    return paths
