"""The plots ``fastloc-viz evaluate --out`` writes: one page per metric family in the results.

* localization: ``accuracy_vs_threshold.html``, box accuracy at IoU 0.5 against the threshold;
* faithfulness: ``faithfulness_curves.html``, the mean deletion and insertion curves;
* sanity: ``sanity_similarity.html``, the mean similarity against the randomization depth.

:func:`evaluation_pages` is what the command passes to
:func:`fastloc_viz.evaluation.command.run`; each method keeps its one colour (:func:`method_color`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from .faithfulness_plots import faithfulness_figure, sanity_curve_figure
from .plots import method_color

__all__ = ["evaluation_pages", "threshold_figure"]


def threshold_figure(results: Mapping[str, Any]) -> go.Figure:
    """Box accuracy at IoU 0.5 against the threshold, one colour per method (solid: largest
    component, MaxBoxAcc; dotted: all components, MaxBoxAccV2's)."""
    fig = go.Figure()
    t = results["thresholds"]
    for label, m in results["methods"].items():
        color = method_color(label)
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


def evaluation_pages(results: Mapping[str, Any]) -> dict[str, str]:
    """``{file name: self-contained HTML}``: the plot of every metric family that ``results``
    (from :func:`fastloc_viz.evaluation.runner.evaluate`) holds numbers for."""
    methods = list(results["methods"].values())
    where = f"{results['model']}, n={results['n']}"
    figures: dict[str, go.Figure] = {}
    if methods and all("curves" in m for m in methods):
        figures["accuracy_vs_threshold.html"] = threshold_figure(results)
    if any(len(m.get("deletion_curve") or ()) for m in methods):
        figures["faithfulness_curves.html"] = faithfulness_figure(
            results, title=f"Faithfulness, mean over {methods[0].get('n_faithfulness', '?')} images: {where}")
    if any(m.get("sanity_curve") for m in methods):
        figures["sanity_similarity.html"] = sanity_curve_figure(
            results, title=f"Model randomization, mean over {methods[0].get('n_sanity', '?')} images: {where}")
    return {name: fig.to_html(include_plotlyjs=True) for name, fig in figures.items()}
