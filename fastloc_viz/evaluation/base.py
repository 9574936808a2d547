"""What every metric of the evaluation runner shares: the method specs, the :class:`Metric`
interface, the one per-query cache (:class:`RowCache`) and the merge of ``torchrun`` ranks.

A metric family (localization, faithfulness, sanity) is a :class:`Metric`: it scores one
method's explanation of one query as a JSON row, and summarizes the rows of the whole data set.
:func:`fastloc_viz.evaluation.runner.evaluate` runs any of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from ..core.files import JsonLines
from ..core.parallel import gather_objects
from ..imaging.dataset import LocalizationDataset, Query
from ..methods import ALL, get_method, select_methods

CACHE_VERSION = 5
"""Bump when a metric's rows change for the same parameters and defaults."""


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
    """``"fastloc,gradcam,fastloc[k=10,rank_grad=plain]"`` -> method specs; ``all`` stands
    for every registered method (:func:`fastloc_viz.methods.select_methods`).

    Raises:
        ValueError: a method name not in the registry (the registered ones are listed) or a
            malformed ``key=value`` list.
    """
    specs = []
    for part in _split_top_level(text):
        if part == ALL:
            specs += [MethodSpec(name) for name in select_methods(ALL)]
            continue
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


# ----------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Explained:
    """One method's explanation of one query: what every metric scores.

    Attributes:
        spec: the method and its parameters.
        kwargs: the keyword arguments ``explain`` got (the spec's, with the run's layer).
        explanation: the :class:`~fastloc_viz.Explanation` (the query's label as target).
        seconds: the wall time of that ``explain`` call.
    """

    spec: MethodSpec
    kwargs: Mapping[str, Any]
    explanation: Any
    seconds: float


class Metric:
    """A metric family over a data set; subclasses set :attr:`name` and implement
    :meth:`score` and :meth:`summary`.

    ``name`` is also the cache's folder (``CACHE/<name>/<hash>/``); :meth:`settings` go into
    the hash, so a rerun with other settings does not reuse rows.
    """

    name = ""
    needs_boxes = False
    """Whether the data must carry ground-truth boxes (localization)."""

    def settings(self) -> dict[str, Any]:
        """The metric's parameters that change its rows (part of the cache key)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Keys this metric adds to the top level of the results."""
        return {}

    def wants(self, position: int) -> bool:
        """Whether the query at ``position`` in the data set is scored (all, by default)."""
        return True

    def score(self, bundle: Any, query: Query, image: Any, explained: Explained) -> dict[str, Any]:
        """One query's row (JSON-serialisable; ``row``, ``image`` and ``label`` are added)."""
        raise NotImplementedError

    def summary(self, rows: Sequence[dict[str, Any]], bundle: Any) -> dict[str, Any]:
        """The method's numbers from this process's rows, in data-set order. Under ``torchrun``
        every rank calls it, and it merges the ranks (:func:`merged_rows`, or sums of counts) so
        that every rank returns what one process would."""
        raise NotImplementedError


def merged_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows, in row order: the rows one process would hold (a collective call
    under ``torchrun``: every rank must make it)."""
    return sorted(chain.from_iterable(gather_objects(list(rows))), key=lambda d: d["row"])


# ------------------------------------------------------------------------------- cache
class RowCache:
    """Append-only JSON-lines rows of one metric for one method configuration.

    ``root/<hash of spec>/spec.json`` describes the configuration; each process appends to its
    own ``part-<rank>.jsonl`` (a line per query, flushed at once), so an interrupted run loses at
    most the query in flight, and a rerun with any number of processes reads every part. Lines
    that do not parse (cut by an interruption) or whose row, image or label no longer match the
    data set are ignored. A row names its image by its path relative to the data's folder
    (``LocalizationDataset.image_name``).
    """

    def __init__(self, root: str | Path, spec: dict[str, Any], rank: int = 0) -> None:
        self._store = JsonLines(root, spec, f"part-{rank}.jsonl")
        self.dir, self.path = self._store.dir, self._store.path

    def load(self, dataset: LocalizationDataset) -> dict[int, dict[str, Any]]:
        """``{row: cached row}`` for the queries of ``dataset`` (rows, not positions: a
        ``--rows`` subset reads its part of a larger run)."""
        by_row = {q.row: q for q in dataset}
        out: dict[int, dict[str, Any]] = {}
        for d in self._store.rows("part-*.jsonl"):
            try:
                q = by_row.get(int(d["row"]))
            except (ValueError, KeyError, TypeError):
                continue
            if q is not None and d.get("image") == dataset.image_name(q) and d.get("label") == q.label:
                out[q.row] = d
        return out

    def append(self, row: dict[str, Any]) -> None:
        self._store.append(row)

    def close(self) -> None:
        self._store.close()


def cache_spec(metric: Metric, bundle: Any, spec: MethodSpec, layer: str | None, dataset: LocalizationDataset) -> dict:
    """The one cache key of every metric: the metric and its settings, the model, the method,
    its parameters and its defaults (a changed default must not reuse rows), the layer, the
    input size and the data."""
    return {
        "version": CACHE_VERSION,
        "metric": metric.name,
        **metric.settings(),
        "model": bundle.name,
        "method": spec.method,
        "kwargs": dict(spec.kwargs),
        "defaults": get_method(spec.method).defaults(),
        "default_layer": bundle.default_layer,
        "layer": layer,
        "input_size": list(bundle.input_size),
        "data": str(dataset.csv_path),
    }
