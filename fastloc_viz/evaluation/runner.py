"""The one evaluation runner: localization, faithfulness and sanity over a data set.

:func:`evaluate` runs any metric objects (:class:`~.localization.Localization`,
:class:`~.boxfree.Faithfulness`, :class:`~.boxfree.Sanity`, or their names) over a
:class:`~fastloc_viz.imaging.dataset.LocalizationDataset`:

* Deterministic: one image at a time, in file order; each method explains the image once (the
  row's label as target) and every metric asked for scores that explanation.
* One cache: each query's row is appended to ``CACHE/<metric>/<hash>/part-<rank>.jsonl`` as soon
  as it exists (:class:`~.base.RowCache`, :func:`~.base.cache_spec`); a rerun skips what is cached.
* One progress bar (rank 0, stderr).
* Images are read as :func:`fastloc_viz.explain` reads them (``LocalizationDataset.read``); a file
  that cannot be read is left out and listed in the results' ``skipped`` with its reason.
* Under ``torchrun --nproc_per_node N``: rank ``r`` takes rows ``r, r + N, ...``; each metric
  merges the ranks (counts all-reduced, box-free rows gathered in row order), so every rank
  returns what one process would.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.parallel import Dist, gather_objects, machine_info, peak_memory_mb
from ..imaging.dataset import LocalizationDataset, Query
from .base import Explained, MethodSpec, Metric, RowCache, cache_spec
from .boxfree import Faithfulness, Sanity
from .localization import Localization

METRICS: dict[str, type[Metric]] = {"localization": Localization, "faithfulness": Faithfulness, "sanity": Sanity}
"""The metric families by name, in the order they run and are reported."""


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"localization,faithfulness"`` -> the metric names, checked, in :data:`METRICS` order."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad or text!r}; choose from {list(METRICS)}")
    return tuple(m for m in METRICS if m in names)


def _explain_function() -> Any:
    """``fastloc_viz.explain``, looked up at call time (tests replace it)."""
    from .. import explain

    return explain


def _reset_peak(device: Any) -> None:
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class _Run:
    """One evaluation: the queries this process owns, what is done, and the caches."""

    def __init__(self, bundle: Any, dataset: LocalizationDataset, specs: list[MethodSpec],
                 metrics: list[Metric], layer: str | None, dist: Dist) -> None:
        self.bundle, self.dataset, self.specs, self.metrics = bundle, dataset, specs, metrics
        self.layer, self.dist = layer, dist
        self.explain = _explain_function()
        self.shard = [(i, q) for i, q in enumerate(dataset) if q.row % dist.world_size == dist.rank]
        self.done: dict[tuple[str, str], dict[int, dict]] = {(s.label, m.name): {} for s in specs for m in metrics}
        self.caches: dict[tuple[str, str], RowCache] = {}
        self.peak = {s.label: 0.0 for s in specs}
        self.layers: dict[str, str | None] = {}

    def open_caches(self, cache_dir: str | Path | None) -> None:
        if cache_dir is None:
            return
        for spec in self.specs:
            for metric in self.metrics:
                key = (spec.label, metric.name)
                spec_key = cache_spec(metric, self.bundle, spec, self.layer, self.dataset)
                self.caches[key] = RowCache(Path(cache_dir) / metric.name, spec_key, self.dist.rank)
                self.done[key] = self.caches[key].load(self.dataset)

    def close(self) -> None:
        for cache in self.caches.values():
            cache.close()

    def kwargs(self, spec: MethodSpec) -> dict[str, Any]:
        kwargs = dict(spec.kwargs)
        if self.layer is not None and "layer" not in kwargs:
            kwargs["layer"] = self.layer
        return kwargs

    def pending(self, position: int, q: Query) -> dict[str, list[Metric]]:
        """``{label: [metric, ...]}``: what is still to compute for this query."""
        out = {}
        for spec in self.specs:
            todo = [m for m in self.metrics if m.wants(position) and q.row not in self.done[(spec.label, m.name)]]
            if todo:
                out[spec.label] = todo
        return out

    def first_image(self) -> tuple[Query, Any]:
        """The first query whose image can be read, and that image."""
        for q in self.dataset:
            image = self.dataset.read(q, self.bundle.input_size)
            if image is not None:
                return q, image
        raise ValueError(f"none of the {len(self.dataset)} images of {self.dataset.csv_path} can be read")

    def run(self, progress: bool, max_queries: int | None) -> None:
        todo = [(q, jobs) for i, q in self.shard if (jobs := self.pending(i, q))]
        bar = None
        if progress and self.dist.is_main:
            from tqdm import tqdm

            rank = f" (rank 0 of {self.dist.world_size})" if self.dist.world_size > 1 else ""
            bar = tqdm(total=len(self.shard), initial=len(self.shard) - len(todo), file=sys.stderr, unit="img",
                       desc=f"evaluate {'+'.join(m.name for m in self.metrics)} {self.dataset.name}{rank}",
                       dynamic_ncols=True)
        try:
            for n, (q, jobs) in enumerate(todo):
                if max_queries is not None and n >= max_queries:
                    break
                self.query(q, jobs)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def explained(self, spec: MethodSpec, image: Any, target: Any) -> Explained:
        """The method's explanation of one image, timed (and its peak memory noted)."""
        kwargs = self.kwargs(spec)
        _reset_peak(self.bundle.device)
        start = time.perf_counter()
        e = self.explain(self.bundle, image, method=spec.method, target=target, **kwargs)
        seconds = time.perf_counter() - start
        self.peak[spec.label] = max(self.peak[spec.label], peak_memory_mb(self.bundle.device))
        self.layers.setdefault(spec.label, e.layer)
        return Explained(spec, kwargs, e, seconds)

    def query(self, q: Query, jobs: dict[str, list[Metric]]) -> None:
        """Explain the query's image once per method; every pending metric scores it. An image
        that cannot be read is left out (``dataset.skipped()``)."""
        image = self.dataset.read(q, self.bundle.input_size)
        if image is None:
            return
        base = {"row": q.row, "image": self.dataset.image_name(q), "label": q.label}
        for spec in self.specs:
            if spec.label not in jobs:
                continue
            explained = self.explained(spec, image, q.label)
            for metric in jobs[spec.label]:
                row = {**base, **metric.score(self.bundle, q, image, explained)}
                key = (spec.label, metric.name)
                self.done[key][q.row] = row
                if key in self.caches:
                    self.caches[key].append(row)

    def layer_of(self, spec: MethodSpec) -> str | None:
        """The layer the method used; when every query came from the cache, ask it once."""
        if spec.label not in self.layers:
            q, image = self.first_image()
            self.explained(spec, image, q.label)
        return self.layers[spec.label]

    def results(self) -> dict[str, Any]:
        """Every method's summary of every metric, merged over the ranks (a collective call)."""
        methods: dict[str, Any] = {}
        for spec in self.specs:
            m: dict[str, Any] = {"method": spec.method, "layer": self.layer_of(spec), "params": dict(spec.kwargs)}
            for metric in self.metrics:
                done = self.done[(spec.label, metric.name)]
                m.update(metric.summary([done[q.row] for _, q in self.shard if q.row in done], self.bundle))
            m["peak_memory_mb"] = max(gather_objects(self.peak[spec.label]))
            methods[spec.label] = m
        seen = {d["row"]: d for part in gather_objects(self.dataset.skipped()) for d in part}
        skipped = [seen[r] for r in sorted(seen)]  # every rank's unreadable files, by row
        out: dict[str, Any] = {
            "n": max((m["n"] for m in methods.values() if "n" in m), default=len(self.dataset) - len(skipped)),
            "model": self.bundle.name,
            "data": str(self.dataset.csv_path),
            "layer": self.layer,
        }
        for metric in self.metrics:
            out.update(metric.describe())
        out.update({"world_size": self.dist.world_size, "machine": machine_info(self.bundle.device),
                    "metrics": [m.name for m in self.metrics], "methods": methods, "skipped": skipped})
        return out


def evaluate(
    bundle: Any,
    dataset: LocalizationDataset,
    methods: Sequence[MethodSpec | str],
    *,
    metrics: Sequence[Metric | str] = ("localization",),
    layer: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    dist: Dist | None = None,
    max_queries: int | None = None,
) -> dict[str, Any]:
    """Evaluate methods on every query of a data set with every metric asked for.

    Args:
        bundle: a ``ModelBundle`` (from ``fastloc_viz.load_model``).
        dataset: the queries (boxes needed for ``localization`` only).
        methods: method names or :class:`~.base.MethodSpec` (name + ``explain`` keyword arguments).
        metrics: metric objects (:class:`~.localization.Localization`, :class:`~.boxfree.Faithfulness`,
            :class:`~.boxfree.Sanity`, with their settings) or names from :data:`METRICS`.
        layer: probe layer for the methods that use one (``None``: each method's default).
        cache_dir: where per-query rows are kept for resuming (``None``: no cache).
        progress: one tqdm bar on stderr (rank 0 only).
        dist: this process's place in a ``torchrun`` job (``None``: single process).
        max_queries: stop after computing this many new queries (for tests of resuming; the
            results then cover only what was computed and cached).

    Returns:
        ``{"n", "model", "data", "layer", "world_size", "machine", "metrics", "methods": {label:
        {"method", "layer", "params", "peak_memory_mb", ...each metric's summary}}, "skipped":
        [{"row", "image", "reason"}, ...]}`` (the files that cannot be read, left out) plus each
        metric's top-level keys (localization: ``thresholds``, ``iou_levels``,
        ``pointing_tolerance``); every rank gets the same, merged numbers.
    """
    objects: list[Metric] = []
    for m in metrics:
        objects += [METRICS[name]() for name in parse_metrics(m)] if isinstance(m, str) else [m]
    if not objects or len({m.name for m in objects}) != len(objects):
        raise ValueError(f"metrics={[m.name for m in objects]} must name each metric family once")
    if len(dataset) == 0:
        raise ValueError(f"the data set {dataset.csv_path} has no rows")
    if any(m.needs_boxes for m in objects) and not dataset.boxes:
        raise ValueError(f"{[m.name for m in objects if m.needs_boxes]} needs boxes; {dataset.csv_path} was read "
                         "without them (LocalizationDataset(..., boxes=True))")
    specs = [MethodSpec(m) if isinstance(m, str) else m for m in methods]
    run = _Run(bundle, dataset, specs, objects, layer, dist or Dist())
    run.open_caches(cache_dir)
    try:
        run.run(progress, max_queries)
    finally:
        run.close()
    return run.results()
