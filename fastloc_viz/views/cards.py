"""Neuron cards as pictures and HTML: for each kept neuron, where its channel fires beside
its guided-backprop map, what zeroing it does to the prediction, and what its channel
detects (its atlas strip). The HTML report uses :func:`cards_html`; the pictures are plain
``uint8`` arrays any front end can show.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from ..core import raster
from ..core.results import Explanation
from ..engine.activations import mean_pairwise_correlation

# An ``Ablation`` (fastloc_viz.neurons.ablation) and a ``NeuronAtlas`` (fastloc_viz.neurons.atlas) are taken
# duck-typed (``Any`` below), so this module sits below both and below the report
# (docs/architecture.md).

__all__ = ["atlas_sign", "cards_html", "check_atlas", "drop_points", "logit_change", "similarity_note"]


def check_atlas(atlas: Any, explanation: Explanation) -> None:
    """Raise ``ValueError`` when ``atlas`` is for another layer (or layer shape) than the
    explanation's probe layer; ``TypeError`` when it is not an atlas."""
    if atlas is None:
        return
    if not all(hasattr(atlas, a) for a in ("layer", "layer_shape", "top", "patches", "signs")):
        raise TypeError(f"atlas must be a NeuronAtlas, got {type(atlas).__name__}")
    if atlas.layer != explanation.layer or (
        explanation.layer_shape is not None and tuple(atlas.layer_shape) != tuple(explanation.layer_shape)
    ):
        raise ValueError(
            f"the atlas is for layer {atlas.layer!r} {atlas.layer_shape}, the explanation probes "
            f"{explanation.layer!r} {explanation.layer_shape}; build an atlas for that layer"
        )


def similarity_note(explanation: Explanation) -> str:
    """One sentence: how alike the guided-backprop maps are, and the activation maps."""
    if explanation.neuron_maps is None or len(explanation.neuron_maps) < 2:
        return ""
    g = mean_pairwise_correlation(explanation.neuron_maps)
    text = f"The {len(explanation.neuron_maps)} guided-backprop maps correlate {g:.2f} on average (pairwise)"
    if explanation.activation_maps is not None:
        a = mean_pairwise_correlation(explanation.activation_maps)
        text += f"; the activation maps {a:.2f}"
    return text + ". Near 1: the guided maps are near copies and say little about each neuron (docs/method.md)."


def _img(rgb: np.ndarray, title: str, css: str = "") -> str:
    return f"<img src='{raster.image_uri(rgb)}' title='{html.escape(title)}' alt='{html.escape(title)}' style='{css}'>"


def drop_points(base_p: float, off_p: float) -> str:
    """The probability drop in points, one decimal, never ``"-0.0"`` (a rise is negative)."""
    return f"{round(100 * (base_p - off_p), 1) + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0


def logit_change(base_logit: float, off_logit: float) -> str:
    """``"logit -3.21 → -4.05 (-0.84)"``: what a probability near 0 or 1 hides."""
    d = round(off_logit - base_logit, 2) + 0.0
    return f"logit {base_logit:.2f} → {off_logit:.2f} ({d:+.2f})"


def _drop_text(ablation: Any, i: int) -> str:
    if ablation is None:
        return ""
    base = ablation.base
    off = ablation.channel_off[i]
    unit = ablation.unit_off[i]
    return (
        f"<div class='drop' data-drop='{base.probability - off.probability:.6f}'>channel off: p "
        f"{base.probability:.1%} → {off.probability:.1%} (drop <b>{drop_points(base.probability, off.probability)}"
        f"</b> points), {logit_change(base.logit, off.logit)}; its unit alone off: {unit.probability:.1%}</div>"
    )


def atlas_sign(atlas, activation: float) -> int:
    """Which of the atlas's units describe a neuron: its channel's most negative ones when
    the neuron's own activation is negative (and the atlas holds them), else the top ones."""
    return -1 if activation < 0 and -1 in atlas.signs else 1


def _strip(atlas: Any, channel: int, n: int, px: int, sign: int = 1) -> str:
    figs = []
    for u, p in zip(atlas.top(channel, n, sign), atlas.patches(channel, n, sign)):
        label = ", ".join(u.labels) if u.labels else u.image.rsplit("/", 1)[-1]
        figs.append(
            "<figure class='patch'>"
            + _img(p, f"{u.image} (y={u.y}, x={u.x}) activation {u.activation:.3g}", f"width:{px}px;height:{px}px")
            + f"<figcaption>{html.escape(label)}</figcaption></figure>"
        )
    return f"<div class='atlas-strip' data-channel='{channel}' data-sign='{sign}'>" + "".join(figs) + "</div>"


CSS = """
.ncards { display:flex; flex-direction:column; gap:10px; }
.ncard { display:flex; gap:12px; align-items:flex-start; border:1px solid var(--line, #e3e7ee); border-radius:8px; padding:8px; }
.ncard .maps { display:flex; gap:6px; }
.ncard .maps figure, .patch { margin:0; text-align:center; font-size:11.5px; color:var(--muted, #5b6578); }
.ncard .meta { font-size:13px; min-width: 220px; }
.atlas-strip { display:flex; gap:4px; flex-wrap:wrap; margin-top:6px; }
.patch figcaption { max-width:72px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.drop { margin-top:4px; }
"""


def cards_html(
    explanation: Explanation,
    *,
    ablation: Any = None,
    atlas: Any = None,
    thumb: int = 150,
    patches: int = 6,
) -> str:
    """The neuron cards of a fastloc explanation as an HTML fragment (see :data:`CSS`)."""
    if explanation.neurons is None or explanation.neuron_maps is None:
        raise ValueError(f"method {explanation.method!r} has no neurons")
    check_atlas(atlas, explanation)
    if ablation is not None and ablation.ranks != tuple(n.rank for n in explanation.neurons):
        raise ValueError("the ablation is for other neurons than the explanation's")
    cards = []
    for i, n in enumerate(explanation.neurons):
        guided = raster.neuron_card_image(explanation, i, size=thumb)
        maps = "<figure>" + _img(guided, "guided-backprop map") + "<figcaption>guided backprop</figcaption></figure>"
        if explanation.activation_maps is not None:
            act = raster.neuron_card_image(explanation, i, size=thumb, kind="activation")
            maps += "<figure>" + _img(act, "activation map") + "<figcaption>where channel fires</figcaption></figure>"
        meta = (
            f"<b>#{n.rank}</b> channel {n.channel} at (y={n.y}, x={n.x})<br>"
            f"score {n.score:.3g} · activation {n.activation:.3g} · gradient {n.gradient:.3g}"
            + _drop_text(ablation, i)
        )
        strip = ""
        if atlas is not None:
            sign = atlas_sign(atlas, n.activation)
            what = "most activating" if sign > 0 else "most negative (as this neuron's unit is)"
            strip = f"<div class='muted'>channel {n.channel}'s {what} images in the atlas:</div>" + _strip(
                atlas, n.channel, patches, max(48, math.floor(thumb / 2)), sign
            )
        cards.append(
            f"<div class='ncard' data-rank='{n.rank}'><div class='maps'>{maps}</div>"
            f"<div class='meta'>{meta}{strip}</div></div>"
        )
    summary = ""
    if ablation is not None:
        a = ablation
        summary = (
            f"<p class='muted'>p({html.escape(a.target_name)}) {a.base.probability:.1%}; all {len(a.ranks)} "
            f"channels off: {a.all_off.probability:.1%} (top-1 then: {html.escape(a.all_off.top.name)}); only "
            f"the {len(a.ranks)} kept: {a.only_kept.probability:.1%} (top-1: {html.escape(a.only_kept.top.name)}).</p>"
        )
    note = similarity_note(explanation)
    return (
        (f"<p class='muted'>{html.escape(note)}</p>" if note else "")
        + summary
        + "<div class='ncards'>"
        + "".join(cards)
        + "</div>"
    )
