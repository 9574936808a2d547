"""The box-free metrics of the evaluation runner (``evaluate --metrics faithfulness,sanity``).

Per method and query (one image, the row's label as target, or the top-1 class when the data
have no labels):

* :class:`Faithfulness`: the deletion and insertion curves of the method's map
  (:mod:`fastloc_viz.evaluation.faithfulness`; deletion from the mean colour, insertion from
  the blur) and their areas;
* :class:`Sanity`: the cascading model-randomization check (:mod:`fastloc_viz.evaluation.sanity`),
  the Spearman / SSIM / HOG similarity at each depth computed, on the runner's explanation of
  the trained model.

Both summarize the mean over every query of every ``torchrun`` rank, in row order: N processes
give the numbers of one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.checks import check_int
from ..core.files import read_json_lines
from ..imaging.dataset import Query
from ..methods import METHODS
from .base import Explained, MethodSpec, Metric, merged_rows
from .faithfulness import faithfulness, step_counts
from .sanity import sanity_check

BOX_FREE_KEYS = ("deletion_auc", "insertion_auc", "sanity_similarity")
"""Added to ``--json`` by ``--metrics faithfulness,sanity`` (and the list ``sanity_curve``)."""


def _mean(rows: Sequence[dict], key: str) -> float:
    return float(np.mean([d[key] for d in rows])) if rows else float("nan")


def _mean_curve(rows: Sequence[dict], key: str) -> list[float]:
    return np.mean([d[key] for d in rows], axis=0).tolist() if rows else []


class Faithfulness(Metric):
    """Deletion (from the mean colour) and insertion (from the blur) curves and their areas.

    Args:
        steps: equal steps from no pixel to every pixel changed.
    """

    name = "faithfulness"

    def __init__(self, steps: int = 16) -> None:
        check_int("steps", steps, 1)
        self.steps = steps

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "deletion": "mean", "insertion": "blur"}

    def score(self, bundle: Any, query: Query, image: Any, explained: Explained) -> dict[str, Any]:
        e, t = explained.explanation, time.perf_counter()
        curves = faithfulness(bundle, image, e.saliency, target=e.target, steps=self.steps)
        return {"target": e.target, "time_s": explained.seconds + time.perf_counter() - t,
                **{f"{k}_auc": c.auc for k, c in curves.items()}, **{k: c.probs.tolist() for k, c in curves.items()}}

    def summary(self, rows: Sequence[dict[str, Any]], bundle: Any) -> dict[str, Any]:
        """``n_faithfulness``, ``fractions``, the mean ``deletion_auc`` / ``insertion_auc`` and
        curves, ``sec_per_image_faithfulness`` (the explanation's time included)."""
        rows = merged_rows(rows)
        h, w = bundle.input_size
        out: dict[str, Any] = {"n_faithfulness": len(rows),
                               "fractions": (step_counts(h * w, self.steps) / (h * w)).tolist()}
        for kind in ("deletion", "insertion"):
            out[f"{kind}_auc"] = _mean(rows, f"{kind}_auc")
            out[f"{kind}_curve"] = _mean_curve(rows, kind)
        out["sec_per_image_faithfulness"] = _mean(rows, "time_s")
        return out


class Sanity(Metric):
    """Cascading model randomization: the map's similarity to the trained model's at each depth.

    Args:
        depths: randomization depths to compute (``None``: all; full randomization is always
            included).
        limit: only the first ``limit`` queries of the data set (each costs a map per depth).
        level: what one depth is (``"blocks"`` or ``"modules"``).
        seed: the re-initialization seed.
    """

    name = "sanity"

    def __init__(self, depths: Sequence[int] | None = None, limit: int | None = None, level: str = "blocks",
                 seed: int = 42) -> None:
        if limit is not None:
            check_int("limit", limit, 1)
        self.depths = None if depths is None else sorted({int(d) for d in depths})
        self.limit, self.level, self.seed = limit, level, seed

    def settings(self) -> dict[str, Any]:
        return {"depths": self.depths, "level": self.level, "seed": self.seed}

    def wants(self, position: int) -> bool:
        return self.limit is None or position < self.limit

    def score(self, bundle: Any, query: Query, image: Any, explained: Explained) -> dict[str, Any]:
        method, t = explained.spec.method, time.perf_counter()
        r = sanity_check(bundle, image, methods=[method], target=query.label, level=self.level, depths=self.depths,
                         seed=self.seed, explain_kwargs=dict(explained.kwargs),
                         originals={method: explained.explanation})[method]
        return {"target": r.target, "time_s": explained.seconds + time.perf_counter() - t, **r.to_dict()}

    def summary(self, rows: Sequence[dict[str, Any]], bundle: Any) -> dict[str, Any]:
        """``n_sanity``, the mean ``sanity_curve`` (Spearman), ``sanity_ssim``, ``sanity_hog``,
        ``sanity_similarity`` (the curve's last point), ``sanity_constant`` (constant maps per
        depth: no rank correlation, so each depth's mean leaves them out; ``None`` where no
        image is left), ``sanity_depths``, ``sanity_groups``,
        ``sec_per_image_sanity``."""
        rows = merged_rows(rows)
        out: dict[str, Any] = {"n_sanity": len(rows)}
        for k in ("spearman", "ssim", "hog"):
            curve = _mean_defined([d[k] for d in rows]) if rows else []
            out["sanity_curve" if k == "spearman" else f"sanity_{k}"] = curve
        # a constant map has no rank correlation: counted here, left out of the means above
        out["sanity_constant"] = np.sum([d.get("constant", [False] * len(d["spearman"])) for d in rows],
                                        axis=0).astype(int).tolist() if rows else []
        last = out["sanity_curve"][-1] if rows else None
        out["sanity_similarity"] = float("nan") if last is None else last
        out["sanity_depths"] = rows[0]["depths"] if rows else []
        out["sanity_groups"] = rows[0]["groups"] if rows else []
        out["sec_per_image_sanity"] = _mean(rows, "time_s")
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
    out: dict[str, dict[int, dict]] = {}
    for spec_path in sorted((Path(cache_dir) / metric).glob("*/spec.json")):
        spec = json.loads(spec_path.read_text())
        label = MethodSpec(spec["method"], spec["kwargs"]).label
        rows: dict[int, dict] = {}
        for d in read_json_lines(spec_path.parent, "part-*.jsonl"):
            try:
                rows[int(d["row"])] = d
            except (ValueError, KeyError, TypeError):
                continue
        if len(rows) > len(out.get(label, {})):  # several settings of one method: the fullest
            out[label] = rows
    order = list(METHODS)

    def rank(label: str) -> tuple[int, str]:
        base = label.split("[")[0]
        return (order.index(base) if base in order else len(order), label)

    return dict(sorted(out.items(), key=lambda kv: rank(kv[0])))


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
