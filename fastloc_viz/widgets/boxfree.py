"""MethodComparison's box-free views: deletion / insertion curves and the randomization
sanity check, in two collapsed sections computed lazily.

Nothing is computed until a section is opened or its button pressed (both checks cost many
model passes: about ``2 * steps`` forwards per method for the curves, one map per method and
randomization depth for the sanity check). The work runs on a thread under the widget's lock
(so a class change waits for it), each pass under the model's (so other widgets and direct
calls on the model wait for it, and it for them), with a progress bar; an error is shown in
the widget's error box and the section offers the button again. Closing the widget cancels
it at its next pass. A new class or
new maps make the results stale: they are dropped and recomputed when the section is next
opened (at once if it is open).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from ..evaluation.faithfulness import faithfulness_of
from ..evaluation.sanity import randomization_groups, sanity_check
from ..views import faithfulness_plots as pf
from .worker import spawn

SECTIONS = ("faithfulness", "sanity")
TITLES = ("Faithfulness: deletion and insertion", "Sanity check: model randomization")


def default_depths(n_groups: int, count: int = 5) -> list[int]:
    """A few randomization depths spread from the top layer to full randomization."""
    if n_groups <= count:
        return list(range(1, n_groups + 1))
    return sorted({1, 2, *(round(n_groups * f) for f in (0.25, 0.5)), n_groups})[:count] or [n_groups]


class ChecksPanel:
    """The two views of :class:`~fastloc_viz.widgets.MethodComparison` (see the module).

    Attributes:
        faithfulness: ``{method: {"deletion": Curve, "insertion": Curve}}`` once computed.
        sanity: ``{method: SanityResult}`` once computed.
    """

    def __init__(self, owner: Any, *, steps: int = 16, depths: Sequence[int] | None = None) -> None:
        self.owner = owner
        self.steps = steps
        self._depths = None if depths is None else list(depths)
        self.faithfulness: dict[str, Any] | None = None
        self.sanity: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self.progress = W.FloatProgress(value=0, min=0, max=1, bar_style="info",
                                        layout=W.Layout(width="160px", visibility="hidden"))
        self.status = W.HTML(layout=W.Layout(margin="0 0 0 8px"))
        # width "auto": the button fits "recompute" (a fixed 110 px cut it to "recomp…")
        self.buttons = {s: W.Button(description="compute", icon="play", layout=W.Layout(width="auto"))
                        for s in SECTIONS}
        self.notes = {
            "faithfulness": W.HTML(
                "<span class='flv-stat'>Each method's pixels, most important first, removed from the image "
                "(deletion, towards the mean colour) or added to a blurred copy (insertion); the curve is "
                f"the class's probability ({steps} steps). Lower deletion / higher insertion area: more faithful.</span>"),
            "sanity": W.HTML(
                "<span class='flv-stat'>The model's layers re-initialized from the top on a copy; each "
                "method's map recomputed. A map that barely changes (ρ near 1) does not depend on what "
                "the model learned.</span>"),
        }
        self.boxes = {s: W.VBox([W.HBox([self.buttons[s], self.notes[s]])]) for s in SECTIONS}
        for s in SECTIONS:
            self.buttons[s].on_click(lambda _b, s=s: self.start(s))
        self.accordion = W.Accordion(children=[self.boxes[s] for s in SECTIONS], selected_index=None)
        for i, t in enumerate(TITLES):
            self.accordion.set_title(i, t)
        self.accordion.observe(self._on_open, "selected_index")
        self.widget = W.VBox([self.accordion, W.HBox([self.progress, self.status])])

    # ------------------------------------------------------------------ public
    @property
    def depths(self) -> list[int]:
        if self._depths is None:
            self._depths = default_depths(len(randomization_groups(self.owner.bundle.model)))
        return self._depths

    def compute(self, section: str) -> Any:
        """Compute one section now, in the caller's thread (raises on errors); returns it."""
        if section not in SECTIONS:
            raise ValueError(f"section {section!r} is not one of {SECTIONS}")
        with self.owner._lock:
            exps = self.owner._base
            n = len(exps)
            if section == "faithfulness":
                out = {}
                for i, (m, e) in enumerate(exps.items()):
                    self._progress(i / n, f"{m} {i + 1}/{n}")
                    out[m] = faithfulness_of(self.owner.bundle, e, steps=self.steps)
                self.faithfulness = out
            else:
                out = {}
                for i, (m, e) in enumerate(exps.items()):
                    self._progress(i / n, f"{m} {i + 1}/{n}")
                    out[m] = sanity_check(self.owner.bundle, self.owner.image, methods=[m], target=e.target,
                                          depths=self.depths, explain_kwargs=self.owner._kwargs,
                                          originals={m: e})[m]
                self.sanity = out
            self._progress(None)
            self._draw(section)
            return out

    def start(self, section: str) -> None:
        """Compute a section on a thread (the button, opening the section)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.buttons[section].disabled = True

        def job() -> None:
            try:
                self.compute(section)
            except Exception as err:  # noqa: BLE001 - shown in the widget's error box
                self._progress(None)
                self.owner._show_error(err, f"computing the {section} check")
            else:
                self.owner._show_error(None)
            finally:
                self.buttons[section].disabled = False

        self._thread = spawn(job, f"fastloc-viz-{section}", self.owner._cancel)

    def wait(self, timeout: float | None = 600.0) -> bool:
        """Block until a started computation ends (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def invalidate(self) -> None:
        """The maps changed (a new class): drop the results; recompute an open section."""
        self.faithfulness = self.sanity = None
        for s in SECTIONS:
            self.boxes[s].children = self.boxes[s].children[:1]
            self.buttons[s].description = "compute"
        if self.accordion.selected_index is not None:
            self.start(SECTIONS[self.accordion.selected_index])

    # ------------------------------------------------------------------ internals
    def _on_open(self, change: dict) -> None:
        i = change["new"]
        if i is None:
            return
        section = SECTIONS[i]
        if getattr(self, section) is None:
            self.start(section)

    def _progress(self, value: float | None, text: str = "") -> None:
        if value is None:
            self.progress.layout.visibility = "hidden"
            self.status.value = ""
            return
        self.progress.layout.visibility = "visible"
        self.progress.value = value
        self.status.value = f"<span class='flv-stat'>{html.escape(text)}</span>"

    def _draw(self, section: str) -> None:
        if section == "faithfulness":
            figs = [W.HTML(pf.ranking_html(pf.faithfulness_ranking(self.faithfulness), section)),
                    go.FigureWidget(pf.faithfulness_figure(self.faithfulness))]
        else:
            image = next(iter(self.owner._base.values())).image
            note = pf.constant_note(self.sanity)
            figs = [W.HTML(pf.ranking_html(pf.sanity_ranking(self.sanity), section)),
                    go.FigureWidget(pf.sanity_strip(self.sanity, image=image)),
                    go.FigureWidget(pf.sanity_curve_figure(self.sanity)),
                    *([W.HTML(f"<span class='flv-stat flv-constant'>{html.escape(note)}</span>")] if note else [])]
        self.boxes[section].children = (self.boxes[section].children[0], *figs)
        self.buttons[section].description = "recompute"
