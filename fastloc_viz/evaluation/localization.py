"""The localization metric of the evaluation runner: how well each method's map and box find
the queried class's ground-truth boxes (GT-known protocol: the row's label is the target).

:class:`Localization` scores a query with :func:`~fastloc_viz.evaluation.metrics.score_query`
and sums the queries into :class:`~fastloc_viz.evaluation.metrics.LocalizationCounts`; under
``torchrun`` the integer counts are all-reduced, so N processes give the metrics of one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..imaging.dataset import Query
from .base import Explained, Metric
from .metrics import (
    DEFAULT_THRESHOLDS,
    IOU_LEVELS,
    POINTING_TOLERANCE,
    LocalizationCounts,
    QueryResult,
    score_query,
)

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


class Localization(Metric):
    """MaxBoxAcc (V2), GT-known and top-1 localization, pointing game, centre in box.

    Args:
        thresholds: the MaxBoxAcc sweep.
        tolerance: pointing-game slack in pixels.
    """

    name = "localization"
    needs_boxes = True

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, tolerance: float = POINTING_TOLERANCE) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.tolerance = tolerance

    def settings(self) -> dict[str, Any]:
        return {"thresholds": [float(t) for t in self.thresholds], "tolerance": self.tolerance}

    def describe(self) -> dict[str, Any]:
        return {"thresholds": [float(t) for t in self.thresholds], "iou_levels": list(IOU_LEVELS),
                "pointing_tolerance": self.tolerance}

    def score(self, bundle: Any, query: Query, image: Any, explained: Explained) -> dict[str, Any]:
        e = explained.explanation
        return score_query(
            e.saliency, e.box, query.boxes_at(tuple(bundle.input_size)), row=query.row, label=query.label,
            prediction=e.top5[0].index if e.top5 else -1, thresholds=self.thresholds, tolerance=self.tolerance,
            time_s=explained.seconds,
        ).to_dict()

    def summary(self, rows: Sequence[dict[str, Any]], bundle: Any) -> dict[str, Any]:
        """:meth:`LocalizationCounts.summary` and its ``curves``, over every rank's queries."""
        counts = LocalizationCounts(thresholds=self.thresholds)
        for d in rows:
            counts.add(QueryResult.from_dict(d))
        counts.all_reduce()
        out = counts.summary()
        out["curves"] = counts.curves()
        return out


def _mib(value: float) -> str:
    """Peak memory for the table: "-" when every query came from the cache (none measured)."""
    return f"{value:.0f}" if value > 0 else "-"


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
