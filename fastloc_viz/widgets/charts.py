"""The explorer's figures: the overlay (image, map, box) and the rank-score chart.

:func:`morph` makes a live ``FigureWidget`` look like a freshly built figure in one batched
update (no new widget, so the page does not flicker); the light updates change only the
map, the box, the title and the bar colours.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from ..core.results import Explanation
from ..methods.combine import cam_rules
from ..views import plots

# The combined map is smooth (a Gaussian of ~16 px at 224 px): a coarser heatmap, drawn with
# plotly's interpolation, looks the same and makes each toggle's update 2x smaller.
MAP_SIDE = 80
OVERLAY_SIZE = 400
BARS_SIZE = (430, 230)


def morph(fw: go.FigureWidget, new: go.Figure) -> None:
    """Make FigureWidget ``fw`` look like ``new`` in one batched update.

    Traces beyond ``new``'s are hidden and emptied (their axis reset to the first), and
    layout keys that ``new`` lacks (such as the right-hand ``yaxis2`` of the rescored
    chart) are deleted: ``layout.update`` alone keeps them.
    """
    extra = len(new.data) - len(fw.data)
    if extra > 0:
        fw.add_traces([go.Scatter(x=[], y=[], visible=False) for _ in range(extra)])
    new_layout = new.layout.to_plotly_json()
    stale = [key for key in fw.layout.to_plotly_json() if key not in new_layout]
    with fw.batch_update():
        for i, trace in enumerate(fw.data):
            if i < len(new.data):
                spec = new.data[i].to_plotly_json()
                spec.pop("type", None)
                if trace.type != new.data[i].type:
                    continue  # morph only keeps trace types; callers build matching figures
                for key in ("xaxis", "yaxis"):
                    if key not in spec and key in trace:
                        spec[key] = None  # back to the first axes unless told
                trace.update(spec, overwrite=True)
                trace.visible = spec.get("visible", True)
            else:
                blank = {"x": [], "y": [], "name": None, "visible": False}
                blank.update({key: None for key in ("xaxis", "yaxis") if key in trace})
                trace.update(blank)
        fw.layout.update(new_layout, overwrite=True)
    if stale:
        fw.plotly_relayout({key: None for key in stale})  # deletes them here and on the page


def overlay_title(e: Explanation, enabled: Sequence[int]) -> str:
    """What the map is made of (the class map when the combine rule uses it, and which neurons),
    then the box's score and, for a whole-image or diffuse box, its kind (:func:`plots.box_caption`)."""
    k = len(e.neurons)
    used = "all" if len(enabled) == k else f"{len(enabled)}/{k}: #" + ",#".join(map(str, enabled))
    made_of = f"neurons {used}"
    if e.params.get("combine") in cam_rules():
        made_of = f"class map + {made_of}"
    return f"{plots.method_label(e.method)} · {html.escape(e.target_name)} · {made_of} · {plots.box_caption(e)}"


def overlay_figure(e: Explanation, enabled: Sequence[int], opacity: float, colorscale: str) -> go.Figure:
    return plots.overlay(
        e,
        opacity=opacity,
        colorscale=colorscale,
        size=OVERLAY_SIZE,
        title=overlay_title(e, enabled),
        max_side=MAP_SIDE,
    )


def bars_figure(e: Explanation, enabled: Sequence[int]) -> go.Figure:
    return plots.rank_scores(e, enabled=enabled, width=BARS_SIZE[0], height=BARS_SIZE[1])


def redraw(overlay: go.FigureWidget, bars: go.FigureWidget, e: Explanation, enabled, opacity, colorscale) -> None:
    """After a new explanation: both figures rebuilt in place."""
    morph(overlay, overlay_figure(e, enabled, opacity, colorscale))
    morph(bars, bars_figure(e, enabled))


def update_light(overlay: go.FigureWidget, bars: go.FigureWidget, e: Explanation, enabled: Sequence[int]) -> None:
    """After a toggle, threshold or combine change: the map, the box, the title, the bars' colours."""
    on = set(enabled)
    z, _ = plots.downsample(e.saliency, MAP_SIDE)
    shapes = plots.box_shapes(e)
    with overlay.batch_update():
        overlay.data[1].z = z
        if len(overlay.layout.shapes) == len(shapes) == 1:  # the usual case: move the one box
            overlay.layout.shapes[0].update(**{k: shapes[0][k] for k in ("x0", "y0", "x1", "y1")})
        else:  # no box, or one box per component: replace them all
            overlay.layout.shapes = shapes
        overlay.layout.title.text = overlay_title(e, enabled)
    bars.data[0].marker.color = [plots.ENABLED_COLOR if n.rank in on else plots.DISABLED_COLOR for n in e.neurons]


def restyle(overlay: go.FigureWidget, opacity: float | None = None, colorscale: str | None = None) -> None:
    """The map's opacity or colours (an unknown colour scale raises)."""
    if opacity is not None:
        overlay.data[1].opacity = float(opacity)
    if colorscale is not None:
        overlay.data[1].colorscale = plots.fading_colorscale(colorscale)
