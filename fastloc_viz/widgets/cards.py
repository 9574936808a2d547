"""The explorer's cards and buttons: one card per neuron (its guided-backprop map beside its
activation map, numbers, how much of the box it drew, the probability drop when its channel is
zeroed, its channel's atlas strip, a **use** checkbox), the class-map card (the probe layer's
Grad-CAM in the ``*_cam`` rules, and how much of the box it drew), and the top-5 buttons. They call back into the explorer; they hold no state of their own beyond
which rank each card shows."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as W
import numpy as np

from ..core.raster import encode, photo_aspect, to_photo_aspect
from ..core.results import Explanation
from ..views import plots
from ..views.cards import atlas_sign, drop_points, logit_change

ON_BORDER, OFF_BORDER, CAM_BORDER = "2px solid #3b6fd4", "2px solid #d5d9e0", "2px solid #e8850c"


def png(rgb_uint8: np.ndarray) -> bytes:
    return encode(rgb_uint8, "PNG", optimize=False)


def make_card(on_check: Callable[[dict, bool], None], css_class: str = "flv-card") -> dict:
    """A card: ``{"image", "text", "share", "check", "box", "rank"}`` and, for neuron cards,
    ``"activation"`` (its activation map), ``"drop"`` (its probability drop) and ``"atlas"``
    / ``"atlas_text"`` (its channel's top patches and their labels); ``on_check(card, value)``
    runs when its checkbox changes."""
    neuron = css_class == "flv-card"
    size = "112px" if neuron else "150px"
    img = W.Image(format="png", layout=W.Layout(width=size, height=size))
    text, share = W.HTML(), W.HTML()
    check = W.Checkbox(value=True, description="use", indent=False, layout=W.Layout(width="auto"))
    card = {"image": img, "text": text, "share": share, "check": check, "rank": 0}
    if neuron:
        act = W.Image(format="png", layout=W.Layout(width=size, height=size))
        act.add_class("flv-act")
        drop = W.HTML()
        strip = W.Image(format="png", layout=W.Layout(width="232px", height="auto", display="none"))
        strip.add_class("flv-atlas")
        strip_text = W.HTML()
        card.update(activation=act, drop=drop, atlas=strip, atlas_text=strip_text)
        act.layout.margin = "0 0 0 4px"
        children = [W.HBox([img, act]), text, share, drop, strip, strip_text, check]
        width = "244px"
    else:
        children, width = [img, text, share, check], "162px"
    box = W.VBox(children, layout=W.Layout(padding="4px", width=width, margin="0 8px 8px 0", border=ON_BORDER))
    box.add_class(css_class)
    card["box"] = box
    check.observe(lambda c: on_check(card, c["new"]), "value")
    return card


def drop_html(base, off, unit) -> str:
    """A card's drop line: the class's probability and logit with the channel zeroed (and,
    in the tooltip, with only the unit zeroed); ``base``, ``off``, ``unit``: ablation
    ``Outcome`` objects. The logit shows the change a probability near 0 or 1 hides."""
    d = base.probability - off.probability
    return (
        f"<div class='flv-neuron flv-drop' data-drop='{d:.6f}' title='p of the explained class with this "
        f"channel zeroed at the probe layer ({unit.probability:.1%} with only its unit zeroed)'>channel off: "
        f"{base.probability:.1%} → {off.probability:.1%} (<b>drop {drop_points(base.probability, off.probability)} "
        f"pts</b>)<br><span class='flv-logit'>{logit_change(base.logit, off.logit)}</span></div>"
    )


def share_html(share: float | None) -> str:
    """A card's share line: how much of the box's map it drew (:func:`fastloc_viz.methods.combine.neuron_shares`)."""
    if share is None:
        return ""
    return (
        f"<div class='flv-neuron flv-share' data-share='{share:.6f}' title='the share of the combined map&#39;s "
        f"mass inside the box that this card&#39;s (weighted) map adds'>draws <b>{share:.0%}</b> of the box</div>"
    )


def atlas_caption(units, sign: int) -> str:
    labels = " · ".join(html.escape(", ".join(u.labels) or u.image.rsplit("/", 1)[-1]) for u in units)
    what = "top" if sign > 0 else "most negative"
    return f"<div class='flv-neuron flv-atlas-labels' title='the channel&#39;s {what} images in the atlas'>{what}: {labels}</div>"


def neuron_text(n) -> str:
    resc = "" if n.rescored is None else f"<br>rescored {n.rescored:.3g}"
    return (
        f"<div class='flv-neuron'><b>#{n.rank}</b> · ch {n.channel} @({n.y},{n.x})<br>"
        f"score {n.score:.3g}<br>act {n.activation:.3g} · grad {n.gradient:.3g}{resc}</div>"
    )


def class_card_text(layer: str, rule: str) -> str:
    return (
        f"<div class='flv-neuron' title='Grad-CAM of {html.escape(str(layer))}, from the "
        f"ranking&#39;s gradient'><b>class map</b> · Grad-CAM<br>same pass, free<br>"
        f"combine '{rule}'</div>"
    )


class Cards:
    """The cards row: ``cards`` (one per neuron, reused), ``class_card`` and ``row`` (the HBox).

    Args:
        on_toggle: ``on_toggle(rank, on)`` when a neuron's checkbox changes.
        on_class_map: ``on_class_map(on)`` when the class map's checkbox changes.
    """

    def __init__(self, on_toggle: Callable[[int, bool], None], on_class_map: Callable[[bool], None]) -> None:
        self._on_toggle = on_toggle
        self.cards: list[dict] = []
        self.class_card = make_card(lambda _card, on: on_class_map(on), css_class="flv-class-card")
        self.row = W.HBox(layout=W.Layout(flex_flow="row wrap"))

    def render(self, e: Explanation, colorscale: str, rebuild: bool = False, atlas=None) -> None:
        """Texts (and with ``rebuild`` the thumbnails, and the atlas strips of an ``atlas``
        for ``e``'s layer) for ``e``; the class card first when ``e`` has a class map."""
        while len(self.cards) < len(e.neurons):
            self.cards.append(make_card(lambda card, on: self._on_toggle(card["rank"], on)))
        for i, (card, n) in enumerate(zip(self.cards, e.neurons)):
            card["rank"] = n.rank
            if rebuild:
                card["image"].value = png(plots.neuron_card_image(e, i, size=112, colorscale=colorscale))
                if e.activation_maps is not None:
                    card["activation"].value = png(
                        plots.neuron_card_image(e, i, size=112, colorscale=colorscale, kind="activation")
                    )
                card["drop"].value = ""
                if atlas is not None:
                    sign = atlas_sign(atlas, n.activation)
                    card["atlas"].value = png(atlas.strip(n.channel, 4, sign))
                    card["atlas"].layout.display = None
                    card["atlas_text"].value = atlas_caption(atlas.top(n.channel, 4, sign), sign)
                else:
                    card["atlas"].layout.display = "none"
                    card["atlas_text"].value = ""
            card["text"].value = neuron_text(n)
        row = [c["box"] for c in self.cards[: len(e.neurons)]]
        if e.class_map is not None:
            if rebuild:
                thumb = plots.neuron_thumbnail(e.image, e.class_map, size=112, colorscale=colorscale)
                self.class_card["image"].value = png(to_photo_aspect(thumb, photo_aspect(e), max_side=112))
            row.insert(0, self.class_card["box"])
        self.row.children = row

    def show_shares(self, e: Explanation, shares: dict | None) -> None:
        """Each card's share of the box (``shares`` from :func:`~fastloc_viz.methods.combine.neuron_shares`;
        ``None`` clears them), the class map's on its card."""
        by_rank = shares["neurons"] if shares else {}
        for card, n in zip(self.cards, e.neurons):
            card["share"].value = share_html(by_rank.get(n.rank))
        self.class_card["share"].value = share_html(shares["class_map"] if shares and e.class_map is not None else None)

    def show_drops(self, e: Explanation, ablation) -> None:
        """Each card's drop line from ``ablation`` (:func:`fastloc_viz.ablate` of ``e``)."""
        for card, co, uo in zip(self.cards, ablation.channel_off, ablation.unit_off):
            card["drop"].value = drop_html(ablation.base, co, uo)

    def order(self, e: Explanation, ablation=None) -> None:
        """The row in rank order, or by drop (largest first) with an ``ablation``."""
        k = len(e.neurons)
        idx = list(range(k))
        if ablation is not None:
            drops = ablation.channel_drops
            idx.sort(key=lambda i: (-drops[i], i))
        row = [self.cards[i]["box"] for i in idx]
        if e.class_map is not None:
            row.insert(0, self.class_card["box"])
        if list(self.row.children) != row:
            self.row.children = row

    def sync(self, e: Explanation, enabled: Sequence[int], cam_rule: str, use_cam: bool, set_quiet) -> None:
        """Checkboxes and borders showing ``enabled`` and whether a class-map rule is used."""
        self.class_card["text"].value = class_card_text(e.layer, cam_rule)
        set_quiet(self.class_card["check"], value=use_cam)
        self.class_card["box"].layout.border = CAM_BORDER if use_cam else OFF_BORDER
        on = set(enabled)
        for card, n in zip(self.cards, e.neurons):
            set_quiet(card["check"], value=n.rank in on)
            card["box"].layout.border = ON_BORDER if n.rank in on else OFF_BORDER


def top5_buttons(e: Explanation, on_click: Callable[[int], None]) -> list[W.Widget]:
    """One button per top prediction (:attr:`Explanation.top5`); the explained class
    highlighted; a line saying so when no label reaches the threshold."""
    if not e.top5:
        return [W.HTML(f"<span class='flv-muted'>no label at or above {e.label_threshold:.0%}</span>")]
    buttons = []
    for p in e.top5:
        b = W.Button(
            description=f"{p.name[:34]} · {p.probability:.1%}",
            tooltip=f"explain class {p.index}: {p.name}",
            layout=W.Layout(width="420px", height="28px"),
            button_style="info" if p.index == e.target else "",
        )
        b.on_click(lambda _b, i=p.index: on_click(i))
        buttons.append(b)
    return buttons
