"""A self-contained HTML report: one file, plotly.js inline once, no network needed to view it.

The report shows, for one image: the image with the combined map and box, the k neuron maps
with their scores, the rank-score chart, a card per neuron (its activation map beside its
guided-backprop map; with an ``ablation``, the probability drop when its channel is zeroed;
with an ``atlas``, its channel's top image patches; see :mod:`fastloc_viz.views.cards`),
the methods side by side on one colour scale, the
top-5 predictions, and the timings; optionally (``faithfulness=``, ``sanity=``) the deletion /
insertion curves and the randomization sanity check. The explanations' JSON (``Explanation.to_dict``) is
embedded too, in a ``<script type="application/json" id="fastloc-data">`` element.

The file is written atomically: to a temporary file in the same directory, then renamed
over the target, so an interrupted run never leaves a half-written report in place of a
good one.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import plotly
import plotly.graph_objects as go

from ..core.files import write_text_atomic
from ..core.results import Box, Explanation
from . import faithfulness_plots as pf
from . import plots
from .cards import CSS as _CARDS_CSS
from .cards import cards_html

__all__ = ["write_report", "render_report"]

_CSS = """
:root { --fg:#1d2330; --muted:#5b6578; --line:#e3e7ee; --accent:#3b6fd4; --bg:#f7f8fb; }
* { box-sizing: border-box; }
body { margin:0; font-family: Inter, system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); line-height: 1.45; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 650; }
header .sub { color: var(--muted); font-size: 14px; }
main { padding: 18px 28px 40px; max-width: 1400px; }
section { background:#fff; border:1px solid var(--line); border-radius: 10px; padding: 14px 18px;
          margin: 0 0 18px; }
section h2 { font-size: 16px; margin: 0 0 10px; font-weight: 620; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid var(--line);
         font-variant-numeric: tabular-nums; }
th { color: var(--muted); font-weight: 560; }
td.num, th.num { text-align: right; }
.bar { display:inline-block; height: 9px; background: var(--accent); border-radius: 3px;
       vertical-align: middle; margin-right: 6px; }
.tag { display:inline-block; padding: 1px 7px; border-radius: 9px; background:#eef2fb; color: var(--accent);
       font-size: 12px; margin-right: 4px; }
.muted { color: var(--muted); font-size: 12.5px; }
code { font-size: 12.5px; }
"""


def _fig_div(fig: go.Figure, first: bool) -> str:
    # plotly.js goes inline exactly once, in the first figure: no CDN, works offline.
    return fig.to_html(
        full_html=False,
        include_plotlyjs=True if first else False,
        config={"displayModeBar": False, "responsive": False},
    )


def _box_text(box) -> str:
    return "no box" if box is None else str(tuple(box))


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _predictions_table(expl: Explanation) -> str:
    rows = []
    for p in expl.top5:
        mark = " <span class='tag'>explained</span>" if p.index == expl.target else ""
        rows.append(
            f"<tr><td class='num'>{p.index}</td><td>{_esc(p.name)}{mark}</td>"
            f"<td><span class='bar' style='width:{max(1.0, 120 * p.probability):.0f}px'></span>"
            f"{p.probability:.1%}</td></tr>"
        )
    if not rows:
        return f"<p class='muted'>no label at or above {expl.label_threshold:.0%}</p>"
    return (
        "<table><tr><th class='num'>class</th><th>name</th><th>probability</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _neurons_table(expl: Explanation) -> str:
    assert expl.neurons is not None
    resc = any(n.rescored is not None for n in expl.neurons)
    head = (
        "<tr><th class='num'>rank</th><th class='num'>channel</th><th class='num'>y, x</th>"
        "<th class='num'>score</th><th class='num'>activation</th><th class='num'>gradient</th>"
        + ("<th class='num'>rescored</th>" if resc else "")
        + "</tr>"
    )
    rows = []
    for n in expl.neurons:
        rows.append(
            f"<tr><td class='num'>{n.rank}</td><td class='num'>{n.channel}</td>"
            f"<td class='num'>{n.y}, {n.x}</td><td class='num'>{n.score:.4g}</td>"
            f"<td class='num'>{n.activation:.4g}</td><td class='num'>{n.gradient:.4g}</td>"
            + (
                f"<td class='num'>{'' if n.rescored is None else format(n.rescored, '.4g')}</td>"
                if resc
                else ""
            )
            + "</tr>"
        )
    return "<table>" + head + "".join(rows) + "</table>"


def _timings_table(explanations: Mapping[str, Explanation], gt_box: Box | None) -> str:
    head = (
        "<tr><th>method</th><th class='num'>time</th><th>stages</th><th class='num'>box</th>"
        + ("<th class='num'>IoU vs GT</th>" if gt_box is not None else "")
        + "<th>layer</th></tr>"
    )
    rows = []
    for name, e in explanations.items():
        stages = ", ".join(f"{_esc(k)} {v * 1000:.0f} ms" for k, v in e.timings.items())
        iou = (
            f"<td class='num'>{plots.box_iou(e.box, gt_box):.2f}</td>" if gt_box is not None else ""
        )
        rows.append(
            f"<tr><td>{_esc(plots.method_label(name))}</td><td class='num'>{e.time_s * 1000:.0f} ms</td>"
            f"<td class='muted'>{stages}</td><td class='num'>{_box_text(e.box)}</td>{iou}"
            f"<td><code>{_esc(e.layer or '')}</code></td></tr>"
        )
    return "<table>" + head + "".join(rows) + "</table>"


def render_report(
    explanations: Mapping[str, Explanation],
    *,
    title: str = "fastloc_viz report",
    gt_box: Box | None = None,
    atlas=None,
    ablation=None,
    faithfulness: Mapping[str, Any] | None = None,
    sanity: Mapping[str, Any] | None = None,
) -> str:
    """The report's HTML as a string (see :func:`write_report`)."""
    extras = {"": {"ablation": ablation, "faithfulness": faithfulness, "sanity": sanity}}
    return render_pages({"": explanations}, title=title, gt_box=gt_box, atlas=atlas, extras=extras)


def render_pages(
    pages: Mapping[str, Mapping[str, Explanation]],
    *,
    title: str = "fastloc_viz report",
    gt_box: Box | None = None,
    atlas=None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """One HTML report for several images: ``pages`` maps an image's name to its
    explanations (method -> :class:`Explanation`); each image gets its own sections, under
    a heading with its name when there are several. ``atlas`` (a neuron atlas) serves every
    page; ``extras`` maps a page's name to its ``ablation``, ``faithfulness`` and ``sanity``
    (see :func:`write_report`)."""
    if not isinstance(pages, Mapping) or not pages:
        raise ValueError("pages must be a non-empty mapping of image name -> explanations")
    state = {"first": True}
    parts: list[str] = []
    subs: list[str] = []
    data: dict[str, Any] = {}
    for name, explanations in pages.items():
        sub, body, blob = _image_sections(explanations, gt_box, state, atlas=atlas, **dict((extras or {}).get(name, {})))
        if len(pages) > 1:
            parts.append(f"<h2 class='image-name' id='image-{len(subs)}'>{_esc(name)}</h2>")
            sub = f"{len(pages)} images · " + sub.split(" · ", 2)[-1]
        parts += body
        subs.append(sub)
        data[name] = blob
    blob = json.dumps(data[""] if list(data) == [""] else {"images": data}).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
        f"<meta name='generator' content='fastloc_viz (plotly {plotly.__version__})'>"
        f"<style>{_CSS}{_CARDS_CSS}</style></head><body><header><h1>{_esc(title)}</h1><div class='sub'>{subs[0]}</div></header>"
        "<main>" + "".join(parts) + "</main>"
        f"<script type='application/json' id='fastloc-data'>{blob}</script></body></html>\n"
    )


def _image_sections(
    explanations: Mapping[str, Explanation],
    gt_box: Box | None,
    state: dict,
    *,
    atlas=None,
    ablation=None,
    faithfulness: Mapping[str, Any] | None = None,
    sanity: Mapping[str, Any] | None = None,
):
    """One image's sections: ``(subtitle, [section HTML], its JSON data)``. ``state["first"]``
    says whether plotly.js still has to go inline."""
    _check_explanations(explanations)
    # The lead explanation: the first fastloc one, else the first.
    lead_name = next(
        (n for n, e in explanations.items() if e.neurons is not None), next(iter(explanations))
    )
    lead = explanations[lead_name]

    def fig(f: go.Figure) -> str:
        out = _fig_div(f, state["first"])
        state["first"] = False
        return out

    h, w = lead.input_size
    pw, ph = lead.photo_size
    sub = (
        f"class <b>{_esc(lead.target_name)}</b> ({lead.target}) · layer <code>{_esc(lead.layer)}</code> · "
        f"photo {pw}×{ph} px, input {h}×{w} · {len(explanations)} method(s) · "
        f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
    )
    parts = [_lead_section(fig, lead, gt_box)]
    if lead.neurons is not None and lead.neuron_maps is not None:
        parts += _neuron_sections(fig, lead, ablation, atlas)
    if len(explanations) > 1:
        parts.append(
            "<section><h2>Methods side by side</h2><p class='muted'>One colour scale for all "
            "panels ([0, 1]); cyan: each method's box"
            + ("; dashed green: ground truth" if gt_box else "")
            + ".</p>"
            + fig(plots.method_grid(explanations, gt_box=gt_box, cell=240))
            + "</section>"
        )
    parts += _box_free_sections(fig, lead, faithfulness, sanity)
    parts.append("<section><h2>Timings</h2>" + _timings_table(explanations, gt_box) + "</section>")
    return sub, parts, _page_data(explanations, gt_box, faithfulness, sanity)


def _check_explanations(explanations) -> None:
    if not isinstance(explanations, Mapping) or not explanations:
        raise ValueError(
            "explanations must be a non-empty mapping of method name -> Explanation, "
            f"got {type(explanations).__name__} {explanations!r:.80}"
        )
    for name, e in explanations.items():
        if not isinstance(e, Explanation):
            raise TypeError(
                f"explanations[{name!r}] is a {type(e).__name__}, expected an Explanation"
            )
    sizes = {name: e.input_size for name, e in explanations.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"all explanations must share one input grid, got sizes {sizes}")


def _lead_section(fig, lead: Explanation, gt_box: Box | None) -> str:
    """The lead explanation's overlay, its top-5, its box (grid and photo pixels) and parameters."""
    h, w = lead.input_size
    pw, ph = lead.photo_size
    params = ", ".join(f"{_esc(k)}={_esc(v)}" for k, v in lead.params.items() if k != "image")
    params += f"<br>image: {_esc(lead.params['image']['rule'])}" if "image" in lead.params else ""
    return (
        "<section><h2>Localization · "
        + _esc(plots.method_label(lead.method))
        + "</h2><div class='row'>"
        + fig(plots.overlay(lead, gt_box=gt_box, size=380))
        + f"<div style='flex: 1 1 340px; max-width: 560px'><h2>{_esc(lead.top_title)}</h2>"
        + _predictions_table(lead)
        + (
            f"<p class='muted'>box {tuple(lead.box)} (x0, y0, x1, y1, pixel edges of the {w}×{h} grid)"
            + f" · in the photo's pixels {tuple(lead.box_original)} ({pw}×{ph})"
            + f" · {_esc(plots.box_caption(lead))} (the share of the map's mass inside the box)"
            if lead.box is not None
            else "<p class='muted'>no box: the map is all zero"
        )
        + (
            f" · ground truth {tuple(gt_box)} · IoU {plots.box_iou(lead.box, gt_box):.2f}"
            if gt_box
            else ""
        )
        + f"<br>time {lead.time_s * 1000:.0f} ms · {params}</p></div></div></section>"
    )


def _neuron_sections(fig, lead: Explanation, ablation, atlas) -> list[str]:
    """The neuron grid with the rank scores and their table, then the neuron cards."""
    grid = (
        f"<section><h2>The {len(lead.neurons)} neurons</h2>"
        "<p class='muted'>Each panel: the neuron's guided-backprop map on the dimmed photo; "
        "the square marks the neuron's cell on the layer grid, the dotted box the extent of "
        "its map (its effective receptive field).</p>"
        + fig(plots.neuron_grid(lead, cell=180))
        + "<div class='row'>"
        + fig(plots.rank_scores(lead))
        + _neurons_table(lead)
        + "</div></section>"
    )
    cards = (
        "<section id='neuron-cards'><h2>What each neuron does</h2><p class='muted'>Left: the guided-backprop "
        "map; right: where the neuron's channel fires on this image (its activation, upsampled; the "
        "square is the neuron's unit)"
        + ("; the drop of the explained class's probability when the channel is zeroed" if ablation else "")
        + ("; the channel's most activating image patches in the atlas" if atlas is not None else "")
        + ".</p>"
        + cards_html(lead, ablation=ablation, atlas=atlas)
        + "</section>"
    )
    return [grid, cards]


def _page_data(explanations, gt_box, faithfulness, sanity) -> dict[str, Any]:
    """One image's JSON: the explanations, and the ground truth and box-free results when given."""
    data: dict[str, Any] = {name: e.to_dict() for name, e in explanations.items()}
    if gt_box is not None:
        data = {"gt_box": list(gt_box), "explanations": data}
    if faithfulness or sanity:
        data = data if "explanations" in data else {"explanations": data}
        if faithfulness:
            data["faithfulness"] = {k: {kind: {"fractions": x.tolist(), "probs": y.tolist(), "auc": a}
                                        for kind, (x, y, a) in v.items()}
                                    for k, v in pf.curves_of(faithfulness).items()}
        if sanity:
            data["sanity"] = {k: r.to_dict() for k, r in sanity.items() if hasattr(r, "to_dict")}
    return data


def _box_free_sections(fig, lead: Explanation, faithfulness, sanity) -> list[str]:
    parts = []
    if faithfulness:
        parts.append(
            "<section><h2>Faithfulness: deletion and insertion</h2><p class='muted'>The image's pixels "
            "in the order each map ranks them, removed (deletion, from the normalization's mean "
            "colour) or added to a blurred start (insertion), and the target class's probability "
            "(Petsiuk et al. 2018). A faithful map makes deletion fall fast and insertion rise fast.</p>"
            + pf.ranking_html(pf.faithfulness_ranking(faithfulness), "faithfulness")
            + fig(pf.faithfulness_figure(faithfulness)) + "</section>"
        )
    if sanity:
        objects = {k: r for k, r in sanity.items() if hasattr(r, "maps")}
        parts.append(
            "<section><h2>Sanity check: model randomization</h2><p class='muted'>The model's layers "
            "re-initialized from the top down on a copy, each method's map recomputed "
            "(Adebayo et al. 2018); ρ is the Spearman correlation with the trained model's map. "
            "A map that barely changes while the model is destroyed does not explain the model.</p>"
            + pf.ranking_html(pf.sanity_ranking(sanity), "sanity")
            + (fig(pf.sanity_strip(objects, image=lead.image)) if objects else "")
            + fig(pf.sanity_curve_figure(sanity))
            + (f"<p class='muted'>{html.escape(pf.constant_note(objects))}</p>" if pf.constant_note(objects) else "")
            + "</section>"
        )
    return parts


def write_report(
    path: str | os.PathLike[str],
    explanations: Mapping[str, Explanation],
    *,
    title: str = "fastloc_viz report",
    gt_box: Box | None = None,
    atlas=None,
    ablation=None,
    faithfulness: Mapping[str, Any] | None = None,
    sanity: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write one self-contained HTML report for one image.

    Args:
        path: the ``.html`` file to write (its directory must exist and be writable).
        explanations: method name -> :class:`Explanation`, all for the same image and input
            grid (``H x W``). The first fastloc explanation leads the report (overlay, neuron
            grid, rank scores); with more than one method, all appear side by side.
        title: the page title.
        gt_box: ``(x0, y0, x1, y1)`` ground-truth box: drawn, and IoUs reported.
        atlas: a :class:`~fastloc_viz.NeuronAtlas` for the lead explanation's probe layer:
            each neuron card shows its channel's top patches, with their labels.
        ablation: :func:`fastloc_viz.ablate`'s result for the lead explanation: each card
            shows its probability drop.
        faithfulness: adds the deletion / insertion curves: ``{method: {"deletion": Curve,
            "insertion": Curve}}`` from :func:`fastloc_viz.evaluation.faithfulness.faithfulness_of`
            (or ``evaluate``'s results, for mean curves over a data set).
        sanity: adds the randomization sanity check: ``{method: SanityResult}`` from
            :func:`fastloc_viz.evaluation.sanity.sanity_check` (maps at each depth and the similarity
            curve), or ``evaluate``'s results (the curve only).

    Returns:
        The path written.

    Raises:
        ValueError / TypeError: empty or malformed ``explanations``.
        FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, OSError: the location is not
            writable; the message names the path. An existing file there is left untouched.
    """
    text = render_report(explanations, title=title, gt_box=gt_box, atlas=atlas, ablation=ablation,
                         faithfulness=faithfulness, sanity=sanity)
    return write_text_atomic(path, text, what="report")


def write_pages(
    path: str | os.PathLike[str],
    pages: Mapping[str, Mapping[str, Explanation]],
    *,
    title: str = "fastloc_viz report",
    atlas=None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> pathlib.Path:
    """Write one self-contained HTML report holding several images (see :func:`render_pages`)."""
    return write_text_atomic(path, render_pages(pages, title=title, atlas=atlas, extras=extras), what="report")
