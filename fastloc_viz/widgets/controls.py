"""The explorer's controls, built and wired from one table (:data:`CONTROLS`).

Each row names the attribute the control is stored under, how to build it, what a change
does (a state setting through ``explorer._request``, or a restyle), how to read the value to
show from the explorer, and the words for an error message. :func:`build_controls` builds
them all and attaches one observer each; :func:`sync_controls` makes them show the applied
state without firing those observers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as W

from ..engine.neuron_passes import RANK_GRADS
from ..methods import METHODS, methods_where
from ..methods.combine import RULES
from ..model.layers import probe_layer_options

COLORSCALES = ("Inferno", "Viridis", "Jet", "Hot", "Turbo", "Greys")
RANK_GRAD_TIPS = {
    "plain": "plain gradient for the ranking",
    "guided": "guided gradient for the ranking (the authors')",
}


def neuron_methods() -> tuple[str, ...]:
    """The registered methods with neurons (read when an explorer is built)."""
    return methods_where(lambda m: m.has_neurons)


def _tip(name: str) -> str:
    doc = (type(METHODS[name]).__doc__ or METHODS[name].label).strip()
    return doc.splitlines()[0]


def _method_buttons(ex) -> W.Widget:
    names = neuron_methods()
    return W.ToggleButtons(
        options=[(METHODS[m].label, m) for m in names],
        value=ex.method,
        tooltips=[_tip(m) for m in names],
        style={"button_width": "140px"},
    )


def _rank_grad_buttons(ex) -> W.Widget:
    return W.ToggleButtons(
        options=list(RANK_GRADS),
        value=ex.state.applied.get("rank_grad", RANK_GRADS[0]),
        tooltips=[RANK_GRAD_TIPS.get(g, g) for g in RANK_GRADS],
        style={"button_width": "74px"},
    )


def _k_slider(ex) -> W.Widget:
    return W.IntSlider(
        value=ex.k, min=1, max=20, description="k", continuous_update=True,
        layout=W.Layout(width="230px"), style={"description_width": "20px"},
    )  # fmt: skip


def _layer_dropdown(ex) -> W.Widget:
    return W.Dropdown(
        options=probe_layer_options(ex.bundle.model, ex.layer, ex.bundle.input_size), value=ex.layer, description="layer",
        layout=W.Layout(width="220px"), style={"description_width": "40px"},
    )  # fmt: skip


def _threshold_slider(ex) -> W.Widget:
    return W.FloatSlider(
        value=ex.threshold, min=0.0, max=1.0, step=0.01, description="box threshold",
        continuous_update=True, readout_format=".2f", layout=W.Layout(width="300px"),
        style={"description_width": "initial"},
    )  # fmt: skip


def _combine_dropdown(ex) -> W.Widget:
    return W.Dropdown(
        options=list(RULES), value=ex.state.applied.get("combine"), description="combine",
        layout=W.Layout(width="170px"), style={"description_width": "58px"},
    )  # fmt: skip


def _opacity_slider(ex) -> W.Widget:
    return W.FloatSlider(
        value=ex.opacity, min=0.0, max=1.0, step=0.05, description="opacity", readout_format=".2f",
        layout=W.Layout(width="240px"), style={"description_width": "52px"},
    )  # fmt: skip


def _colorscale_dropdown(ex) -> W.Widget:
    return W.Dropdown(
        options=list(COLORSCALES), value=ex.colorscale, description="colours",
        layout=W.Layout(width="170px"), style={"description_width": "52px"},
    )  # fmt: skip


@dataclass(frozen=True)
class Control:
    """One row of the table.

    Attributes:
        attr: the explorer attribute the widget is stored under.
        make: ``make(explorer) -> widget``.
        on_change: ``on_change(explorer, value)`` when the user changes it.
        shown: ``shown(explorer) -> value`` the control shows (``None``: not synced).
        context: what the user was doing, for the error box ("changing k").
        setting: the explorer setting it drives, if any: the control is disabled while the
            shown method has no such parameter.
    """

    attr: str
    make: Callable[[Any], W.Widget]
    on_change: Callable[[Any, Any], None]
    shown: Callable[[Any], Any] | None
    context: str
    setting: str | None = None


def _setting(attr: str, make: Callable[[Any], W.Widget], key: str, context: str,
             convert: Callable[[Any], Any] = lambda v: v) -> Control:
    """A control that drives the explorer setting ``key`` and shows its applied value."""
    return Control(attr, make, lambda ex, value: ex._request(**{key: convert(value)}),
                   lambda ex: ex.state.applied[key], context, key)  # fmt: skip


CONTROLS: tuple[Control, ...] = (
    _setting("method_buttons", _method_buttons, "method", "switching method"),
    _setting("rank_grad_buttons", _rank_grad_buttons, "rank_grad", "changing rank_grad"),
    _setting("k_slider", _k_slider, "k", "changing k", int),
    _setting("layer_dropdown", _layer_dropdown, "layer", "changing the layer"),
    _setting("threshold_slider", _threshold_slider, "threshold", "changing the threshold", float),
    _setting("combine_dropdown", _combine_dropdown, "combine", "changing the combination"),
    Control("opacity_slider", _opacity_slider, lambda ex, v: ex._restyle(opacity=v),
            None, "changing the opacity"),
    Control("colorscale_dropdown", _colorscale_dropdown, lambda ex, v: ex._restyle(colorscale=v),
            None, "changing colours"),
)  # fmt: skip


def build_controls(ex) -> None:
    """Build every control of :data:`CONTROLS` as an attribute of ``ex``, with its observer."""
    for row in CONTROLS:
        widget = row.make(ex)
        setattr(ex, row.attr, widget)
        widget.observe(
            lambda c, row=row: ex._ui(lambda: row.on_change(ex, c["new"]), row.context), "value"
        )


def sync_controls(ex) -> None:
    """Make the controls show the applied state, quietly (after code set it, or an error)."""
    layer = ex.layer
    if layer not in ex.layer_dropdown.options:
        ex._set_quiet(ex.layer_dropdown, options=list(ex.layer_dropdown.options) + [layer])
    for row in CONTROLS:
        widget = getattr(ex, row.attr)
        if row.setting is not None and row.setting not in ex.state.applied:
            widget.disabled = True  # the method shown has no such parameter
            continue
        widget.disabled = False
        if row.shown is not None:
            ex._set_quiet(widget, value=row.shown(ex))
