"""MethodComparison: the methods the user picks (the default five, ``"all"``, or any
registered ones) side by side on one colour scale, with each one's time and, given a
ground-truth box, IoU; below, the box-free checks (deletion / insertion curves,
randomization sanity check), computed when opened and ranking the methods shown
(:mod:`.boxfree`)."""

from __future__ import annotations

import html
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from ..core.checks import check_threshold
from ..core.maps import box_fields
from ..core.results import Box, Explanation
from ..methods import METHODS, default_of, select_methods
from ..model.bundle import ModelBundle
from ..views import plots
from .base import CSS, WidgetBase
from .boxfree import ChecksPanel
from .charts import morph


def _explain(*args: Any, **kwargs: Any) -> Explanation:
    # fastloc_viz.widgets.explain, looked up at call time (tests patch the package's name)
    return sys.modules[__package__].explain(*args, **kwargs)


class MethodComparison(WidgetBase):
    """All methods side by side on one colour scale, with per-method time and IoU.

    Shared controls: the methods shown (a tag box over the registry; "default" and "all"
    buttons; a method added is computed on the worker, one removed is dropped), the class
    (top-5 first, then all; type a name, part of one or an index) and the box threshold
    (re-boxes each method's map; no model call). At first each method boxes at its own
    default threshold (the registry's, as ``explain``); moving the slider boxes every method
    at that one threshold, and "each method's default" goes back.

    Args:
        model_or_bundle: a :class:`~fastloc_viz.model.bundle.ModelBundle` or an ``nn.Module``.
        image: anything :func:`~fastloc_viz.explain` accepts.
        methods: names from :data:`fastloc_viz.METHODS`, a comma-separated string, or
            ``"all"`` (default: the five built-in methods of
            :data:`fastloc_viz.methods.DEFAULT_METHODS` and any you registered; see
            :func:`fastloc_viz.methods.select_methods`).
        gt_box: ``(x0, y0, x1, y1)`` ground truth on the model's input grid, or ``None``.
        threshold: one box threshold for every method; ``None`` (default): each method's own.
        explanations: method -> explanation already computed for ``image`` (same model and
            class): reused instead of computed again.
        faithfulness_steps: deletion / insertion steps of the faithfulness view.
        sanity_depths: randomization depths of the sanity view (default: five, from the top
            layer to full randomization).
        **explain_kwargs: passed to every :func:`~fastloc_viz.explain` call.

    Programmatic access: :attr:`methods` (settable: names or ``"all"``),
    :attr:`explanations` (method -> explanation), :attr:`target`,
    :attr:`threshold`, :attr:`gt_box`, :meth:`ious`; :attr:`checks` (the box-free views:
    ``checks.compute("faithfulness")`` / ``("sanity")``, results in ``checks.faithfulness``
    and ``checks.sanity``).
    """

    def __init__(
        self,
        model_or_bundle: ModelBundle | Any,
        image: Any,
        methods: str | Sequence[str] | None = None,
        gt_box: Box | None = None,
        *,
        target: int | str | None = None,
        threshold: float | None = None,
        debounce: float = 0.25,
        explanations: Mapping[str, Explanation] | None = None,
        faithfulness_steps: int = 16,
        sanity_depths: Sequence[int] | None = None,
        **explain_kwargs: Any,
    ) -> None:
        super().__init__(model_or_bundle, image, debounce)
        methods = select_methods(methods)
        if gt_box is not None and len(tuple(gt_box)) != 4:
            raise ValueError(f"gt_box={gt_box!r} must be (x0, y0, x1, y1)")
        if threshold is not None:
            check_threshold(threshold)
        self._methods = self._want_m = methods
        self._gt = None if gt_box is None else tuple(int(v) for v in gt_box)
        self._kwargs = explain_kwargs
        self._threshold = None if threshold is None else float(threshold)
        self._want_t: int | None = None if target is None else self.bundle.class_index(target)
        self._base: dict[str, Explanation] = {}
        self._current: dict[str, Explanation] = {}
        self._seed = dict(explanations or {})
        if self._seed and target is None:
            self._want_t = next(iter(self._seed.values())).target
        with self._lock:
            self._compute(self._want_t)
        self._seed = {}
        self.checks = ChecksPanel(self, steps=faithfulness_steps, depths=sanity_depths)
        self._build()
        self._render()

    @property
    def explanations(self) -> dict[str, Explanation]:
        """Method -> explanation on screen (boxes at the current threshold)."""
        return dict(self._current)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods shown, in order."""
        return self._methods

    @methods.setter
    def methods(self, value: str | Sequence[str] | None) -> None:
        names = select_methods(value)
        with self._lock:
            self._methods = self._want_m = names
            self._compute(self.target)
            self._render()

    @property
    def target(self) -> int:
        return self._first().target

    @target.setter
    def target(self, value: int | str | None) -> None:
        index = None if value is None else self.bundle.class_index(value)
        with self._lock:
            self._compute(index)
            self._want_t = self.target
            self._render()

    @property
    def threshold(self) -> float | None:
        """The one box threshold of every method; ``None``: each method's own default."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        if value is not None:
            check_threshold(value)
        with self._lock:
            self._threshold = None if value is None else float(value)
            self._rebox()
            self._render()

    @property
    def gt_box(self) -> Box | None:
        return self._gt

    @gt_box.setter
    def gt_box(self, value: Box | None) -> None:
        self._gt = None if value is None else tuple(int(v) for v in value)
        self._render()

    def ious(self) -> dict[str, float] | None:
        """Method -> IoU of its box with :attr:`gt_box` (``None`` without one)."""
        if self._gt is None:
            return None
        return {m: plots.box_iou(e.box, self._gt) for m, e in self._current.items()}

    def _compute(self, target: int | None) -> None:
        out: dict[str, Explanation] = {}
        n = len(self._methods)
        for i, m in enumerate(self._methods):
            if hasattr(self, "widget"):
                self._set_progress(i / n, f"{m} {i + 1}/{n}")
            seed = self._seed.get(m) or self._base.get(m)  # given, or already on screen
            if seed is not None and seed.target == target:
                out[m] = seed
                continue
            out[m] = _explain(self.bundle, self.image, method=m, target=target, **self._kwargs)
            self.stats["explain_calls"] += 1
        if hasattr(self, "widget"):
            self._set_progress(None)
        self._base = out
        self._rebox()
        if hasattr(self, "checks"):
            self.checks.invalidate()  # the curves and maps belonged to the old class

    def _rebox(self) -> None:
        """The boxes at the shared threshold (the explanations as computed, at each method's
        own default, when there is none)."""
        out = {}
        for m, e in self._base.items():
            t = default_of(m, "threshold") if self._threshold is None else self._threshold
            out[m] = e if e.params["threshold"] == t else e.replace(
                **box_fields(e.saliency, t, e.params["components"], f"the {m} map"), params={**e.params, "threshold": t},
            )
        self._current = out

    def _want_target(self, index: int) -> None:
        self._want_t = index
        self._debouncer.poke()

    def _want_methods(self, names: Sequence[str]) -> None:
        try:
            wanted = select_methods(list(names))
        except ValueError:  # an empty box: keep what is shown (the error is shown)
            self._set_quiet(self.method_box, value=list(self._methods))
            raise
        self._want_m = wanted
        self._debouncer.poke()

    def _work(self) -> None:
        with self._lock:
            want = self._want_t
            if self._want_m != self._methods:
                self._methods = self._want_m
                want = self.target if want is None else want
                self._set_quiet(self.method_box, value=list(self._methods))
                self._recompute(want)
                return
            if want == self.target:
                self._set_quiet(self.class_box, value=self._class_label(self._first(), self.target))
                return
            self._recompute(want)

    def _recompute(self, want: int) -> None:
        """The worker's computation for class ``want`` and the methods wanted; on an error
        the widget keeps what it showed."""
        shown = tuple(self._base)
        try:
            self._compute(want)
        except Exception as err:  # noqa: BLE001 - shown in the widget
            self._want_t = self.target
            self._methods = self._want_m = shown
            self._show_error(err, f"explaining class {want}")
            self._set_progress(None)
            self._set_quiet(self.class_box, value=self._class_label(self._first(), self.target))
            self._set_quiet(self.method_box, value=list(shown))
            return
        self._set_progress(0.95, "drawing…")
        self._guarded(self._render, "drawing")
        self._set_progress(None)

    def _slider_value(self) -> float:
        """The shared threshold, or (each method at its own) the first method's default."""
        return default_of(self.methods[0], "threshold") if self._threshold is None else self._threshold

    def _own_thresholds(self, on: bool) -> None:
        """Tick: each method at its own default; untick: every method at the slider's value."""
        self.threshold = None if on else float(self.threshold_slider.value)

    def _first(self) -> Explanation:
        return next(iter(self._current.values()))

    def _build_method_picker(self) -> W.Widget:
        self.method_box = W.TagsInput(
            value=list(self._methods), allowed_tags=list(METHODS), allow_duplicates=False,
            layout=W.Layout(width="auto", flex="1 1 360px"),
        )
        self.method_box.observe(
            lambda c: None if self._muted else self._guarded(lambda: self._want_methods(c["new"]), "choosing the methods"),
            "value",
        )
        buttons = []
        for text, choice in (("default", None), ("all", "all")):
            b = W.Button(description=text, layout=W.Layout(width="70px"), tooltip=f"show the {text} methods")
            b.on_click(lambda _b, choice=choice: self._guarded(
                lambda: setattr(self.method_box, "value", list(select_methods(choice))), "choosing the methods"))
            buttons.append(b)
        return W.HBox([W.HTML("<span class='flv-stat'>methods</span>"), self.method_box, *buttons],
                      layout=W.Layout(align_items="center", flex_flow="row wrap"))

    def _build(self) -> None:
        self.threshold_slider = W.FloatSlider(
            value=self._slider_value(),
            min=0.0,
            max=1.0,
            step=0.01,  # the defaults (0.54, 0.23, ...) sit on the grid
            description="box threshold",
            readout_format=".2f",
            style={"description_width": "initial"},
            layout=W.Layout(width="300px"),
        )
        self.threshold_slider.observe(
            lambda c: (
                None
                if self._muted
                else self._guarded(lambda: setattr(self, "threshold", float(c["new"])), "changing the threshold")
            ),
            "value",
        )
        self.own_thresholds = W.Checkbox(
            value=self._threshold is None, description="each method's default", indent=False,
            layout=W.Layout(width="auto", margin="0 0 0 12px"),
        )
        self.own_thresholds.observe(
            lambda c: (
                None
                if self._muted
                else self._guarded(lambda: self._own_thresholds(c["new"]), "changing the threshold")
            ),
            "value",
        )
        self.grid_fig = go.FigureWidget(plots.method_grid(self._current, gt_box=self._gt, cell=230))
        self.table = W.HTML()
        self.widget = W.VBox(
            [
                W.HTML(CSS + f"<p class='flv-title'>MethodComparison · {html.escape(self.bundle.name)}</p>"),
                self._build_method_picker(),
                W.HBox([self.class_box, self.threshold_slider, self.own_thresholds],
                       layout=W.Layout(flex_flow="row wrap", align_items="center")),
                self.class_message,
                W.HBox([self.progress, self.status], layout=W.Layout(align_items="center")),
                self.error,
                self.grid_fig,
                self.table,
                self.checks.widget,
            ],
            layout=W.Layout(padding="6px"),
        )
        self.widget.add_class("fastloc-comparison")

    def _render(self) -> None:
        if not hasattr(self, "widget"):
            return
        e0 = self._first()
        grid = plots.method_grid(self._current, gt_box=self._gt, cell=230)
        if [t.type for t in grid.data] == [t.type for t in self.grid_fig.data]:
            morph(self.grid_fig, grid)
        else:  # other methods: another grid, a new figure in the old one's place
            old, self.grid_fig = self.grid_fig, go.FigureWidget(grid)
            self.widget.children = tuple(self.grid_fig if c is old else c for c in self.widget.children)
            old.close()
        self._show_class_options(e0)
        self._set_quiet(self.class_box, value=self._class_label(e0, e0.target))
        self._set_quiet(self.threshold_slider, value=self._slider_value())
        self._set_quiet(self.own_thresholds, value=self._threshold is None)
        self._set_quiet(self.method_box, allowed_tags=list(METHODS), value=list(self._methods))
        ious = self.ious()
        rows = "".join(
            f"<tr><td>{html.escape(plots.method_label(m))}</td>"
            f"<td style='text-align:right'>{e.time_s * 1000:.0f} ms</td>"
            f"<td style='text-align:right'>{e.params['threshold']:.2f}</td>"
            f"<td style='text-align:right'>{'no box' if e.box is None else tuple(e.box)}</td>"
            + (f"<td style='text-align:right'>{ious[m]:.2f}</td>" if ious else "")
            + "</tr>"
            for m, e in self._current.items()
        )
        self.table.value = (
            "<table class='flv-stat' style='border-collapse:collapse'><tr><th style='text-align:left'>method</th>"
            "<th>time</th><th>threshold</th><th>box</th>"
            + ("<th>IoU vs GT</th>" if ious else "")
            + "</tr>"
            + rows
            + "</table>"
        )
        self.status.value = (
            f"<span class='flv-stat'>class {html.escape(e0.target_name)} ({e0.target}) · "
            f"total {sum(e.time_s for e in self._current.values()) * 1000:.0f} ms</span>"
        )
