"""Plotly figures of the box-free checks: deletion / insertion curves and the randomization
sanity strip. Used by the HTML report (:func:`fastloc_viz.views.report.write_report`'s
``faithfulness=`` and ``sanity=``) and the comparison widget.

Each method has one colour everywhere (:func:`fastloc_viz.views.plots.method_color`): its
place in the method registry picks it, so Grad-CAM is the same colour in the curves, the
similarity curve and across reports. :func:`faithfulness_ranking` and :func:`sanity_ranking`
order the methods shown by each check.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import (
    DEFAULT_COLORSCALE,
    MODEBAR_PX,
    _image_axes,
    _photo_trace,
    fading_colorscale,
    heatmap_trace,
    method_color,
    method_label,
    title_height,
)

__all__ = ["constant_note", "curves_of", "faithfulness_figure", "faithfulness_ranking", "ranking_html",
           "sanity_curve_figure", "sanity_ranking", "sanity_strip"]

def _name(label: str) -> str:
    base, _, rest = label.partition("[")
    return method_label(base) + (f" [{rest}" if rest else "")


def curves_of(source: Mapping[str, Any]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """``{label: {"deletion": (fractions, probs, auc), "insertion": ...}}`` from either
    :func:`fastloc_viz.evaluation.faithfulness.faithfulness` results per method (``{label: {kind:
    Curve}}``) or ``evaluate``'s results (``{label: {"fractions", "deletion_curve", ...}}``,
    or the whole results object with a ``"methods"`` key): the mean curves over the data."""
    if "methods" in source and isinstance(source["methods"], Mapping):
        source = source["methods"]
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}
    for label, d in source.items():
        out[label] = {}
        for kind in ("deletion", "insertion"):
            c = d.get(kind)
            if c is not None and hasattr(c, "probs"):
                out[label][kind] = (np.asarray(c.fractions), np.asarray(c.probs), float(c.auc))
            elif f"{kind}_curve" in d and len(d[f"{kind}_curve"]):
                out[label][kind] = (np.asarray(d["fractions"]), np.asarray(d[f"{kind}_curve"]),
                                    float(d[f"{kind}_auc"]))
    return {k: v for k, v in out.items() if v}


def faithfulness_figure(source: Mapping[str, Any], *, title: str | None = None, height: int = 380,
                        width: int = 820) -> go.Figure:
    """Deletion (left) and insertion (right) curves, one line per method, AUC in the legend.

    ``source``: see :func:`curves_of` (one image's curves, or evaluate's mean curves).
    """
    curves = curves_of(source)
    if not curves:
        raise ValueError("no deletion or insertion curve to plot")
    titles = ("<b>Deletion</b><br>lower area is better", "<b>Insertion</b><br>higher area is better")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.09, subplot_titles=titles)
    for label, kinds in curves.items():
        color = method_color(label)
        for col, kind in enumerate(("deletion", "insertion"), start=1):
            if kind not in kinds:
                continue
            x, y, area = kinds[kind]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", marker={"size": 4}, line={"color": color, "width": 2},
                name=f"{_name(label)} · {kind[:3]}. AUC {area:.3f}", legendgroup=label,
                hovertemplate=f"{_name(label)}<br>%{{x:.0%}} of pixels<br>p = %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
    for col, what in ((1, "removed"), (2, "added")):  # top-ranked first (the notes beside say so)
        fig.update_xaxes(title={"text": f"share of pixels {what}", "font": {"size": 12}}, tickformat=".0%",
                         range=[0, 1], row=1, col=col)
        fig.update_yaxes(title_text="probability of the target class" if col == 1 else None, rangemode="tozero",
                         row=1, col=col)
    for ann in fig.layout.annotations:
        ann.font = {"size": 12}
    top = MODEBAR_PX + title_height(titles, 12) + (30 if title else 0)
    fig.update_layout(template="plotly_white", height=height, width=width,
                      margin={"l": 50, "r": 10, "t": top, "b": 40}, legend={"font": {"size": 11}}, title=title)
    return fig


def faithfulness_ranking(source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The methods, most faithful first: by insertion AUC minus deletion AUC (a method whose
    top pixels bring the class back fast and take it away fast scores high). ``source``: as
    :func:`curves_of`. Each row: ``{"rank", "method", "deletion", "insertion", "score"}``."""
    rows = []
    for label, kinds in curves_of(source).items():
        d = kinds["deletion"][2] if "deletion" in kinds else float("nan")
        i = kinds["insertion"][2] if "insertion" in kinds else float("nan")
        rows.append({"method": label, "deletion": d, "insertion": i, "score": i - d})
    return _ranked(rows, "score", descending=True)


def sanity_ranking(source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The methods, most sensitive to the trained weights first: by the Spearman similarity
    of the map at the deepest randomization computed to the trained model's map (lower is
    better). ``source``: as :func:`sanity_curve_figure`. Each row: ``{"rank", "method",
    "similarity"}``."""
    rows = [{"method": label, "similarity": float(np.asarray(r["spearman"], dtype=float)[-1])}
            for label, r in _sanity_rows(source).items()]
    return _ranked(rows, "similarity", descending=False)


def _ranked(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    def order(row):
        v = row[key]
        return (np.isnan(v), -v if descending else v)

    return [{"rank": i + 1, **row} for i, row in enumerate(sorted(rows, key=order))]


RANK_COLUMNS = {
    "faithfulness": (("deletion", "deletion AUC (lower is better)"), ("insertion", "insertion AUC (higher)"),
                     ("score", "insertion − deletion")),
    "sanity": (("similarity", "similarity after randomization (Spearman, lower is better)"),),
}


def ranking_html(rows: list[dict[str, Any]], kind: str) -> str:
    """A small HTML table of :func:`faithfulness_ranking` (``kind="faithfulness"``) or
    :func:`sanity_ranking` (``"sanity"``) rows, each method in its colour."""
    columns = RANK_COLUMNS[kind]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        f"<tr><td>{r['rank']}</td><td><span style='color:{method_color(r['method'])}'>■</span> "
        f"{html.escape(_name(r['method']))}</td>"
        + "".join(f"<td style='text-align:right'>{r[key]:.3f}</td>" for key, _ in columns) + "</tr>"
        for r in rows
    )
    return (f"<table class='flv-rank' style='border-collapse:collapse;font-size:12px'><tr><th>#</th>"
            f"<th style='text-align:left'>method</th>{head}</tr>{body}</table>")


def _sanity_rows(source: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{label: {"depths", "groups", "spearman", "ssim", "hog"}}`` from SanityResult objects
    or evaluate's results (``sanity_curve`` / ``sanity_ssim`` / ``sanity_hog``)."""
    if "methods" in source and isinstance(source["methods"], Mapping):
        source = source["methods"]
    rows = {}
    for label, r in source.items():
        if hasattr(r, "spearman"):
            rows[label] = {"depths": list(r.depths), "groups": list(r.groups), "spearman": r.spearman,
                           "ssim": r.ssim, "hog": r.hog}
        elif isinstance(r, Mapping) and r.get("sanity_curve"):
            rows[label] = {"depths": r["sanity_depths"], "groups": r["sanity_groups"],
                           "spearman": r["sanity_curve"], "ssim": r.get("sanity_ssim"), "hog": r.get("sanity_hog")}
    return rows


def sanity_curve_figure(source: Mapping[str, Any], *, height: int = 340, title: str | None = None) -> go.Figure:
    """Similarity to the trained model's map against the randomization depth, one colour per
    method: Spearman (solid), SSIM (dashed), HOG similarity (dotted).

    ``source``: ``{method: SanityResult}`` from :func:`fastloc_viz.evaluation.sanity.sanity_check`, or
    evaluate's results (mean curves over the data).
    """
    rows = _sanity_rows(source)
    if not rows:
        raise ValueError("no randomization result to plot")
    fig = go.Figure()
    for label, r in rows.items():
        color = method_color(label)
        x = list(range(len(r["depths"]) + 1))  # evenly spaced: the depths computed, in order
        ticks = ["trained", *[f"{d}: {g}" for d, g in zip(r["depths"], r["groups"])]]
        for key, dash, shown in (("spearman", "solid", True), ("ssim", "dash", "legendonly"),
                                 ("hog", "dot", "legendonly")):
            if r.get(key) is None or not len(r[key]):
                continue
            fig.add_trace(go.Scatter(
                x=x, y=[1.0, *np.asarray(r[key], dtype=float)], mode="lines+markers",
                line={"color": color, "dash": dash}, legendgroup=label, visible=shown,
                name=f"{_name(label)} · {key}", text=ticks,
                hovertemplate=f"{_name(label)} ({key})<br>%{{text}}<br>%{{y:.3f}}<extra></extra>",
            ))
    first = next(iter(rows.values()))
    fig.update_xaxes(title_text="layers randomized from the top (depth: the last one randomized)",
                     tickvals=list(range(len(first["depths"]) + 1)), tickangle=0,
                     ticktext=["trained", *[f"{d}<br>{g}" for d, g in zip(first["depths"], first["groups"])]])
    fig.update_yaxes(title_text="similarity to the trained model's map", range=[-0.3, 1.05])
    fig.add_hline(y=0, line={"color": "#999", "width": 1})
    fig.update_layout(template="plotly_white", height=height, title=title,
                      margin={"l": 50, "r": 10, "t": 40 if title else 20, "b": 60}, legend={"font": {"size": 11}})
    return fig


def sanity_strip(results: Mapping[str, Any], *, image: np.ndarray | None = None, cell: int = 130,
                 max_side: int = 56, colorscale: str = DEFAULT_COLORSCALE) -> go.Figure:
    """Each method's map (rows) for the trained model and at each randomization depth
    (columns), one colour scale; each panel's title gives the Spearman correlation with the
    trained model's map. A map that stays put while the model is destroyed is a warning.

    Args:
        results: ``{method: SanityResult}`` from :func:`fastloc_viz.evaluation.sanity.sanity_check`.
        image: ``H x W x 3`` in ``[0, 1]`` under the maps (dimmed), optional.
    """
    if not results:
        raise ValueError("sanity_strip needs at least one SanityResult")
    labels = list(results)
    first = results[labels[0]]
    cols = 1 + len(first.depths)
    titles = []
    for label in labels:
        r = results[label]
        titles.append(f"<b>{_name(label)}</b><br>trained")
        titles += [f"{d}: {g}<br>" + ("constant map" if np.isnan(s) else f"ρ = {s:.2f}")
                   for d, g, s in zip(r.depths, r.groups, r.spearman)]
    rows = len(labels)
    gap = title_height(titles, 10.5) + 4  # each row's titles in the gap above it, none under the toolbar
    plot_px = rows * cell + (rows - 1) * gap
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=gap / plot_px if rows > 1 else 0.0)
    h, w = first.original.shape
    for i, label in enumerate(labels):
        r = results[label]
        for j, m in enumerate([r.original, *r.maps]):
            if image is not None:
                fig.add_trace(_photo_trace(np.asarray(image) * 0.5, max_side=2 * max_side, name="image"),
                              row=i + 1, col=j + 1)
            fig.add_trace(heatmap_trace(m, opacity=0.85 if image is not None else 1.0, coloraxis="coloraxis",
                                        max_side=max_side, name=f"{label} {j}"), row=i + 1, col=j + 1)
            _image_axes(fig, h, w, row=i + 1, col=j + 1)
    for ann in fig.layout.annotations:
        ann.font = {"size": 10.5}
    fig.update_layout(
        coloraxis={"colorscale": fading_colorscale(colorscale) if image is not None else colorscale,
                   "cmin": 0, "cmax": 1, "showscale": False},
        width=max(400, cell * cols), height=plot_px + MODEBAR_PX + gap + 5,
        margin={"l": 5, "r": 5, "t": MODEBAR_PX + gap, "b": 5}, template="plotly_white", showlegend=False,
    )
    return fig


def constant_note(results: Mapping[str, Any]) -> str:
    """One sentence naming where a method's randomized map was constant (no rank correlation,
    left out of the means), or ``""``: ``{method: SanityResult}``."""
    where = [f"{_name(label)} at {', '.join(r.constant_groups)}" for label, r in results.items()
             if getattr(r, "constant_groups", ())]
    if not where:
        return ""
    return ("Constant maps (all zero: no rank correlation, so left out of the curves' means, not counted "
            "as 0): " + "; ".join(where) + ".")
