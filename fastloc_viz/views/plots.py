"""Plotly figures for explanations: pure functions, shared by the widgets, the report and the docs.

Every function takes :class:`~fastloc_viz.core.results.Explanation` objects (or their arrays)
and returns a new :class:`plotly.graph_objects.Figure`; nothing here runs a model.

Coordinates: figures use the model's input grid in pixels, ``x`` to the right and ``y``
down, pixel ``(row, col)`` centred on ``(x=col, y=row)``. A box ``(x0, y0, x1, y1)`` in
pixel-edge coordinates is therefore drawn from ``x0 - 0.5`` to ``x1 - 0.5``.

Pixel work (colours, thumbnails, data URIs) lives in :mod:`fastloc_viz.core.raster`.

Size: photos and neuron thumbnails are embedded as JPEG data URIs through ``go.Image``
(a few kB each) and the combined map as a downsampled heatmap (at most ``max_side`` cells a
side), so an HTML page with a dozen figures stays small.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.raster import (
    DEFAULT_COLORSCALE,
    colorize,
    downsample,
    fading_colorscale,
    image_uri,
    neuron_card_image,
    neuron_centre,
    neuron_thumbnail,
    photo_aspect,
    receptive_field,
    shrink,
)
from ..core.results import Box, Explanation
from ..evaluation.metrics import iou as _iou
from ..methods import METHODS

__all__ = [
    "BOX_COLOR",
    "GT_COLOR",
    "DEFAULT_COLORSCALE",
    "box_caption",
    "box_iou",
    "downsample",
    "image_uri",
    "colorize",
    "fading_colorscale",
    "heatmap_trace",
    "method_title",
    "predictions",
    "neuron_thumbnail",
    "neuron_card_image",
    "receptive_field",
    "overlay",
    "neuron_grid",
    "rank_scores",
    "method_color",
    "method_grid",
    "method_label",
    "title_height",
    "MODEBAR_PX",
]

BOX_COLOR = "#00e5ff"
"""Colour of the predicted box."""
GT_COLOR = "#7CFC00"
"""Colour of the ground-truth box."""
ENABLED_COLOR = "#3b6fd4"
DISABLED_COLOR = "#c9ced6"

_FONT = dict(family="Inter, system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif")

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#000075", "#f032e6", "#ffbb78", "#222222", "#637939", "#ff9896")
"""One colour per method: plotly's D3 palette (reordered so the five first methods are
well separated), then six more picked for distance from the rest, so the fourteen built-in
methods get fourteen colours at least 27 CIELAB units apart."""


MODEBAR_PX = 32
"""The height of plotly's toolbar (the mode bar, top right): a figure's top margin keeps
titles below it."""


def title_height(titles: Sequence[str], size: float) -> int:
    """Pixels the tallest of ``titles`` (``<br>`` breaks lines) takes at font ``size`` px,
    with the gap plotly leaves under a subplot title: what a row of panels must leave free
    above it so that its titles do not cover the row above."""
    lines = max((t.count("<br>") + 1 for t in titles), default=1)
    return math.ceil(lines * size * 1.3 + 6)


def method_label(method: str) -> str:
    """A readable name for a method id (``"gradcam"`` -> ``"Grad-CAM"``), from the registry."""
    m = METHODS.get(method)
    return m.label if m is not None else method


def method_color(method: str) -> str:
    """The method's colour in every plot: by its place in the registry, else by a hash of its
    name. A label with parameters (``fastloc[k=10]``) takes its method's colour."""
    base = method.split("[", 1)[0]
    names = list(METHODS)
    if base in names:
        return PALETTE[names.index(base) % len(PALETTE)]
    return PALETTE[int(hashlib.sha1(base.encode()).hexdigest(), 16) % len(PALETTE)]


# ----------------------------------------------------------------------------- helpers


KIND_WORDS = {"whole": "whole image", "diffuse": "diffuse map"}
"""How a caption names a box kind other than ``"object"`` (:func:`fastloc_viz.core.maps.box_kind`)."""


def box_caption(explanation: Explanation) -> str:
    """The box's score and, for a whole-image box or one from a diffuse map, its kind:
    ``"box score 0.87"``, ``"box score 0.99 (whole image)"``, ``"no box"``."""
    e = explanation
    if e.box is None:
        return "no box"
    if e.box_score is None:
        return "box"
    kind = KIND_WORDS.get(e.box_kind or "")
    return f"box score {e.box_score:.2f}" + (f" ({kind})" if kind else "")


def box_iou(box: Box | None, gt_box: Box) -> float:
    """IoU of a method's box with a ground-truth box (the metrics' one definition); 0 for no
    box (an all-zero map)."""
    return 0.0 if box is None else _iou(box, gt_box)


def box_shapes(explanation: Explanation, box: Box | None = None) -> list[dict[str, Any]]:
    """The box's plotly shape (none without a box) and, with ``components="all"``, a thinner
    dotted one per other component (named with its score). ``box`` replaces the explanation's."""
    if box is not None:
        return [_box_shape(box, BOX_COLOR, "box")]
    if explanation.box is None:
        return []
    shapes = [_box_shape(explanation.box, BOX_COLOR, "box")]
    for j, (other, score) in enumerate((explanation.boxes or ())[1:], start=2):
        shapes.append(_box_shape(other, BOX_COLOR, f"box {j} (score {score:.2f})", dash="dot", width=1.5))
    return shapes


def _box_shape(
    box: Box,
    color: str,
    name: str,
    dash: str = "solid",
    width: float = 2.5,
    xref: str = "x",
    yref: str = "y",
) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    return dict(
        type="rect",
        xref=xref,
        yref=yref,
        name=name,
        x0=x0 - 0.5,
        y0=y0 - 0.5,
        x1=x1 - 0.5,
        y1=y1 - 0.5,
        line=dict(color=color, width=width, dash=dash),
        fillcolor="rgba(0,0,0,0)",
    )


def _image_axes(
    fig: go.Figure, h: int, w: int, row: int | None = None, col: int | None = None, aspect: float = 1.0
) -> None:
    """Axes in grid pixels; a single figure draws a grid pixel ``aspect`` times as tall as it
    is wide (:func:`~fastloc_viz.core.raster.photo_aspect`), so the photo keeps its own shape;
    subplots get it from the figure's size."""
    kw = dict(row=row, col=col) if row is not None else {}
    fig.update_xaxes(range=[-0.5, w - 0.5], visible=False, constrain="domain", **kw)
    fig.update_yaxes(
        range=[h - 0.5, -0.5],
        visible=False,
        scaleanchor="x" if row is None else None,
        scaleratio=aspect if row is None else None,
        constrain="domain",
        **kw,
    )


def _photo_trace(image: np.ndarray, max_side: int | None = None, **kw: Any) -> go.Image:
    h, w = np.shape(image)[:2]
    f = math.ceil(max(h, w) / max_side) if max_side is not None and max(h, w) > max_side else 1
    return _grid_image(shrink(image, f), f, **kw)


def _grid_image(img: np.ndarray, f: int, **kw: Any) -> go.Image:
    """An image downsampled by ``f`` placed on the input grid: each of its pixels stretched
    over ``f x f`` grid pixels."""
    return go.Image(
        source=image_uri(img), x0=(f - 1) / 2, y0=(f - 1) / 2, dx=f, dy=f, hoverinfo="skip", **kw
    )


def heatmap_trace(
    saliency: np.ndarray,
    *,
    opacity: float = 0.5,
    colorscale: str = DEFAULT_COLORSCALE,
    max_side: int = 112,
    showscale: bool = True,
    coloraxis: str | None = None,
    name: str = "map",
) -> go.Heatmap:
    """The map as a downsampled heatmap placed on the input grid (see :func:`downsample`)."""
    z, f = downsample(saliency, max_side)
    kw: dict[str, Any] = (
        dict(coloraxis=coloraxis)
        if coloraxis
        else dict(
            colorscale=fading_colorscale(colorscale),
            zmin=0.0,
            zmax=1.0,
            showscale=showscale,
            colorbar=dict(thickness=10, len=0.8, tickvals=[0, 0.5, 1], outlinewidth=0),
        )
    )
    return go.Heatmap(
        z=z.astype(np.float32),
        x0=(f - 1) / 2,
        dx=f,
        y0=(f - 1) / 2,
        dy=f,
        opacity=opacity,
        zsmooth="best" if f > 1 else False,
        name=name,
        hovertemplate="x=%{x:.0f} y=%{y:.0f}<br>map=%{z:.2f}<extra></extra>",
        **kw,
    )


# ----------------------------------------------------------------------------- figures
def overlay(
    explanation: Explanation,
    *,
    saliency: np.ndarray | None = None,
    box: Box | None = None,
    gt_box: Box | None = None,
    opacity: float = 0.75,
    colorscale: str = DEFAULT_COLORSCALE,
    show_box: bool = True,
    title: str | None = None,
    size: int = 420,
    max_side: int = 112,
) -> go.Figure:
    """The photo with the localization map overlaid, the predicted box and the GT box.

    Traces: ``data[0]`` the photo (``go.Image``), ``data[1]`` the map (``go.Heatmap``).
    Shapes: ``layout.shapes[0]`` the predicted box, then the GT box when given. Widgets
    update exactly those in place.

    Args:
        explanation: supplies ``image`` (``H x W x 3``), ``saliency`` (``H x W``) and ``box``.
        saliency, box: override the explanation's (e.g. after toggling neurons).
        gt_box: ``(x0, y0, x1, y1)`` ground truth, drawn dashed in green with the IoU.
        opacity: of the map over the photo, in ``[0, 1]``.
        colorscale: a plotly colorscale name.
        size: figure width in pixels.
        max_side: the heatmap's resolution (see :func:`downsample`).
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity={opacity!r} must be in [0, 1]")
    sal = explanation.saliency if saliency is None else saliency
    bx = explanation.box if box is None else box
    h, w = sal.shape
    aspect = photo_aspect(explanation) if sal.shape == explanation.input_size else 1.0
    fig = go.Figure()
    fig.add_trace(_photo_trace(explanation.image, name="image"))
    fig.add_trace(heatmap_trace(sal, opacity=opacity, colorscale=colorscale, max_side=max_side))
    shapes = box_shapes(explanation, box) if show_box else []
    if gt_box is not None:
        shapes.append(_box_shape(gt_box, GT_COLOR, "gt_box", dash="dash"))
    if title is None:
        title = f"{method_label(explanation.method)} · {explanation.target_name}"
        if gt_box is not None:
            title += f" · IoU {box_iou(bx, gt_box):.2f}"
    fig.update_layout(
        shapes=shapes,
        width=size + 60,
        height=round(size * h / w * aspect) + 44,
        margin=dict(l=4, r=4, t=40, b=4),
        title=dict(text=title, x=0.02, font=dict(size=14)),
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        dragmode=False,
    )
    _image_axes(fig, h, w, aspect=aspect)
    return fig


def _neuron_title(n: Any) -> str:
    s = f"<b>#{n.rank}</b> ch {n.channel} @({n.y},{n.x})<br>score {n.score:.3g} · a {n.activation:.3g} · g {n.gradient:.3g}"
    if getattr(n, "rescored", None) is not None:
        s += f"<br>rescored {n.rescored:.3g}"
    return s


def neuron_grid(
    explanation: Explanation,
    *,
    enabled: Sequence[int] | None = None,
    cols: int = 5,
    thumb: int = 112,
    colorscale: str = DEFAULT_COLORSCALE,
    cell: int = 190,
) -> go.Figure:
    """The k neuron maps, each titled with rank, channel, position, score, activation, gradient.

    Each panel marks the neuron's position on the input grid (a cross at the centre of its
    layer cell, the cell as a small square) and its rough receptive field (dotted: see
    :func:`receptive_field`). Disabled neurons (ranks not in ``enabled``) are greyed.

    Args:
        explanation: a fastloc explanation (``neurons`` and ``neuron_maps``: ``k x H x W``).
        enabled: the ranks (1-based) in use; all when ``None``.
    """
    if explanation.neurons is None or explanation.neuron_maps is None:
        raise ValueError(
            f"method {explanation.method!r} has no neurons: neuron_grid needs a fastloc "
            "explanation ('fastloc' or 'fastloc_rescored')"
        )
    neurons = explanation.neurons
    k = len(neurons)
    cols = max(1, min(cols, k))
    rows = math.ceil(k / cols)
    on = set(n.rank for n in neurons) if enabled is None else set(enabled)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[_neuron_title(n) for n in neurons],
        horizontal_spacing=0.02,
        vertical_spacing=0.16 / rows,
    )
    h, w = explanation.input_size
    for i, (n, nmap) in enumerate(zip(neurons, explanation.neuron_maps)):
        r, c = i // cols + 1, i % cols + 1
        _neuron_panel(fig, explanation, n, nmap, thumb, colorscale, dimmed=n.rank not in on, row=r, col=c)
        _image_axes(fig, h, w, row=r, col=c)
    for ann in fig.layout.annotations:
        ann.font = dict(size=10.5)
    fig.update_layout(
        width=cell * cols + 20,
        height=rows * (round(cell * h / w * photo_aspect(explanation)) + 30) + 30,
        margin=dict(l=6, r=6, t=56, b=6),
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        showlegend=False,
        dragmode=False,
    )
    return fig


def _neuron_panel(
    fig: go.Figure, explanation: Explanation, n: Any, nmap: np.ndarray, thumb: int, colorscale: str,
    *, dimmed: bool, row: int, col: int,
) -> None:
    """One panel of :func:`neuron_grid`: the neuron's thumbnail on the input grid (greyed when
    ``dimmed``), the extent of its map (dotted), its layer cell (square) and centre (cross)."""
    thumb_img = neuron_thumbnail(explanation.image, nmap, size=thumb, colorscale=colorscale)
    if dimmed:
        thumb_img = (thumb_img.astype(np.float32) * 0.35 + 255 * 0.65).astype(np.uint8)
    h, w = explanation.input_size
    f = math.ceil(max(h, w) / thumb) if max(h, w) > thumb else 1
    ref = dict(row=row, col=col)
    fig.add_trace(_grid_image(thumb_img, f, name=f"neuron {n.rank}"), **ref)
    cx, cy, sx, sy = neuron_centre(explanation, n.y, n.x)
    rf = receptive_field(nmap)
    fig.add_shape(_box_shape(rf, "rgba(255,255,255,0.7)", f"rf {n.rank}", dash="dot", width=1.2), **ref)
    fig.add_shape(
        dict(
            type="rect", x0=cx - sx / 2, x1=cx + sx / 2, y0=cy - sy / 2, y1=cy + sy / 2,
            line=dict(color=BOX_COLOR, width=1.5),
        ),
        **ref,
    )
    fig.add_trace(
        go.Scatter(
            x=[cx],
            y=[cy],
            mode="markers",
            marker=dict(symbol="x-thin", size=9, line=dict(width=2, color=BOX_COLOR)),
            hovertemplate=(
                f"neuron #{n.rank}: channel {n.channel}, unit ({n.y}, {n.x})<br>"
                f"centre ({cx:.0f}, {cy:.0f}) px, cell {sx:.0f}x{sy:.0f} px<extra></extra>"
            ),
            showlegend=False,
        ),
        **ref,
    )


def rank_scores(
    explanation: Explanation,
    *,
    enabled: Sequence[int] | None = None,
    width: int = 420,
    height: int = 240,
) -> go.Figure:
    """Bar chart of the kept neurons' rank scores (activation x gradient), best first.

    Enabled neurons are blue, disabled grey. For ``fastloc_rescored`` the rescored target
    logit is a second series.
    """
    if explanation.neurons is None:
        raise ValueError(
            f"method {explanation.method!r} has no neurons: rank_scores needs a fastloc explanation"
        )
    neurons = explanation.neurons
    on = set(n.rank for n in neurons) if enabled is None else set(enabled)
    labels = [f"#{n.rank} ch{n.channel}" for n in neurons]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[n.score for n in neurons],
            name="rank score",
            marker_color=[ENABLED_COLOR if n.rank in on else DISABLED_COLOR for n in neurons],
            customdata=[[n.activation, n.gradient] for n in neurons],
            hovertemplate="%{x}<br>score %{y:.4g}<br>activation %{customdata[0]:.4g}<br>"
            "gradient %{customdata[1]:.4g}<extra></extra>",
        )
    )
    if any(n.rescored is not None for n in neurons):
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=[n.rescored for n in neurons],
                name="rescored logit",
                yaxis="y2",
                mode="markers+lines",
                marker=dict(size=8, color="#e8590c"),
                line=dict(width=1, dash="dot"),
            )
        )
        fig.update_layout(
            yaxis2=dict(overlaying="y", side="right", title="masked logit", showgrid=False),
            legend=dict(orientation="h", y=1.12, x=0),
        )
    fig.update_layout(
        width=width,
        height=height,
        margin=dict(l=50, r=20, t=36, b=40),
        font=_FONT,
        title=dict(text="Rank scores (activation × gradient)", x=0.02, font=dict(size=13)),
        yaxis=dict(title="score", gridcolor="#eee", zeroline=True, zerolinecolor="#bbb"),
        plot_bgcolor="white",
        paper_bgcolor="white",
        bargap=0.35,
    )
    return fig


def predictions(explanation: Explanation, *, width: int = 420, height: int = 220) -> go.Figure:
    """Horizontal bars of the top predictions (:attr:`Explanation.top5`: the top five, or
    with sigmoid outputs every label at or above the threshold) and their probabilities."""
    top = list(explanation.top5)[::-1]
    colors = [ENABLED_COLOR if p.index == explanation.target else "#8fa8d9" for p in top]
    fig = go.Figure(
        go.Bar(
            x=[p.probability for p in top],
            y=[f"{p.name} ({p.index})" for p in top],
            orientation="h",
            marker_color=colors,
            text=[f"{p.probability:.1%}" for p in top],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    fig.update_layout(
        width=width,
        height=height,
        margin=dict(l=10, r=10, t=36, b=30),
        font=_FONT,
        title=dict(text=explanation.top_title, x=0.02, font=dict(size=13)),
        xaxis=dict(range=[0, 1], tickformat=".0%", gridcolor="#eee"),
        yaxis=dict(automargin=True),
        plot_bgcolor="white",
        paper_bgcolor="white",
    )
    return fig


def method_grid(
    explanations: Mapping[str, Explanation],
    *,
    gt_box: Box | None = None,
    opacity: float = 0.75,
    colorscale: str = DEFAULT_COLORSCALE,
    cols: int | None = None,
    cell: int = 260,
    max_side: int = 64,
    show_time: bool = True,
) -> go.Figure:
    """Methods side by side on one colour scale (``[0, 1]``), each with its box and time.

    Each panel title gives the method, its wall time and, when ``gt_box`` is given, the IoU
    of its box with it. Trace order per panel: photo then map, panel ``i`` holds
    ``data[2 * i]`` and ``data[2 * i + 1]``; shapes follow the same order (box, then GT).

    Args:
        explanations: method name -> explanation, all for the same image and input grid.
        gt_box: ``(x0, y0, x1, y1)`` ground truth.
        show_time: put each method's wall time in its title.
    """
    if not explanations:
        raise ValueError("method_grid needs at least one explanation, got an empty mapping")
    names = list(explanations)
    n = len(names)
    cols = cols or (n if n <= 4 else 3 if n <= 9 else 4)
    rows = math.ceil(n / cols)
    titles = [method_title(name, explanations[name], gt_box, show_time) for name in names]
    first = explanations[names[0]]
    h, w = first.input_size
    # each row's titles sit in the gap above it, which is as tall as they are (in pixels)
    gap = title_height(titles, 11.5) + 4
    row_px = round(cell * h / w * photo_aspect(first))
    plot_px = rows * row_px + (rows - 1) * gap
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.025,
        vertical_spacing=gap / plot_px if rows > 1 else 0.0,
    )
    for i, name in enumerate(names):
        e = explanations[name]
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(_photo_trace(e.image, max_side=2 * max_side, name="image"), row=r, col=c)
        fig.add_trace(
            heatmap_trace(
                e.saliency, opacity=opacity, coloraxis="coloraxis", max_side=max_side, name=name
            ),
            row=r,
            col=c,
        )
        if e.box is not None:
            fig.add_shape(_box_shape(e.box, BOX_COLOR, f"box {name}"), row=r, col=c)
        if gt_box is not None:
            fig.add_shape(_box_shape(gt_box, GT_COLOR, f"gt {name}", dash="dash"), row=r, col=c)
        _image_axes(fig, *e.input_size, row=r, col=c)
    for ann in fig.layout.annotations:
        ann.font = dict(size=11.5)
    fig.update_layout(
        coloraxis=dict(
            colorscale=fading_colorscale(colorscale),
            cmin=0,
            cmax=1,
            colorbar=dict(thickness=10, len=0.7, tickvals=[0, 0.5, 1], outlinewidth=0),
        ),
        width=cols * cell + 70,
        height=plot_px + MODEBAR_PX + gap + 4,
        margin=dict(l=4, r=4, t=MODEBAR_PX + gap, b=4),
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        dragmode=False,
    )
    return fig


def method_title(
    name: str, explanation: Explanation, gt_box: Box | None = None, show_time: bool = True
) -> str:
    """``"<b>Grad-CAM</b><br>41 ms · IoU 0.62"`` for one panel of :func:`method_grid`."""
    parts = [f"{explanation.time_s * 1000:.0f} ms"] if show_time else []
    if gt_box is not None:
        parts.append(f"IoU {box_iou(explanation.box, gt_box):.2f}")
    return f"<b>{method_label(name)}</b>" + ("<br>" + " · ".join(parts) if parts else "")
