"""NeuronExplorer: the glue between :class:`~.state.ExplorerState` (what is wanted and
shown), the controls (:mod:`.controls`), the cards (:mod:`.cards`), the figures
(:mod:`.charts`) and the export (:mod:`.export`)."""

from __future__ import annotations

import html
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from ..core.checks import check_choice, check_threshold
from ..core.results import Explanation
from ..engine.neuron_passes import RANK_GRADS
from ..methods import get_method
from ..methods.combine import cam_rules, neuron_shares
from ..model.bundle import ModelBundle
from ..views import plots
from ..views.cards import check_atlas, similarity_note
from . import charts
from .base import CSS, WidgetBase
from .cards import Cards, top5_buttons
from .controls import build_controls, neuron_methods, sync_controls
from .effects import Effects, without_html
from .export import EXPORT_TIP, export_state, export_stem
from .state import EXPLAIN, NOTHING, RECOMBINE, ExplorerState


def _seam(name: str):
    """``fastloc_viz.widgets.explain`` / ``.recombine``, looked up at call time (so a test
    can patch the package's name)."""
    return getattr(sys.modules[__package__], name)


class NeuronExplorer(WidgetBase):
    """Explore a FastLoc explanation neuron by neuron.

    Layout: the image with the combined map and box (the title gives the box's score, and says
    when it covers the whole image or comes from a diffuse map); one card per neuron (its
    guided-backprop map beside where its channel fires, rank, score, activation, gradient, how
    much of the box it drew (:func:`~fastloc_viz.methods.combine.neuron_shares`; the class map's
    card says how much the class map drew), the probability
    drop when its channel is zeroed, with ``atlas`` its channel's top patches, and a
    checkbox; the cards can be sorted by rank or by drop); under the cards, what the model
    predicts without the unticked neurons; the rank-score bar chart; the top-5 predictions.
    The drops come from :func:`fastloc_viz.ablate`, run on the worker thread after the
    explanation is shown (the first display does not wait for it), with every subset of the
    k channels for ``k <= 6``, so unticking neurons runs no pass. Controls: class (top-5 first, then all classes; type a name, part of one
    or an index and press Enter), method (the registered methods with neurons),
    ``rank_grad``, ``k``, layer, combination rule, box threshold, map opacity and colours,
    and an export button.

    Args:
        model_or_bundle: a :class:`~fastloc_viz.model.bundle.ModelBundle` or an ``nn.Module``.
        image: anything :func:`~fastloc_viz.explain` accepts (path, PIL, array, tensor).
        debounce: seconds of quiet after the last control event before a recomputation.
        export_dir: where the export button writes (default: the current directory).
        explanation: a fastloc explanation already computed for ``image`` (by
            :func:`~fastloc_viz.explain` with the same model): the explorer starts from it
            instead of computing it again.
        atlas: a :class:`~fastloc_viz.NeuronAtlas` of the probe layer: each card shows its
            channel's top patches with their labels (hidden while another layer is shown).
        **explain_kwargs: passed to :func:`~fastloc_viz.explain` (``method``, ``target``,
            ``layer``, ``k``, ``kmax``, ``rank_grad``, ``combine``, ``sigma``,
            ``threshold``, ``components``, ``passes``).

    Programmatic access: :attr:`explanation`, :attr:`enabled`, :attr:`target`, :attr:`k`,
    :attr:`layer`, :attr:`method`, :attr:`rank_grad`, :attr:`threshold`, :meth:`export`.
    """

    def __init__(
        self,
        model_or_bundle: ModelBundle | Any,
        image: Any,
        *,
        debounce: float = 0.25,
        export_dir: str | os.PathLike[str] | None = None,
        explanation: Explanation | None = None,
        atlas: Any = None,
        **explain_kwargs: Any,
    ) -> None:
        super().__init__(model_or_bundle, image, debounce)
        self.atlas = atlas
        self.effects = Effects(self.bundle)
        self.sort_by = "rank"
        self._shares_for: Explanation | None = None  # the explanation whose shares the cards show
        self.state = ExplorerState(
            self._settings(explanation, explain_kwargs),
            explain=lambda **kw: _seam("explain")(self.bundle, self.image, **kw),
            recombine=lambda *a, **kw: _seam("recombine")(*a, **kw),
            method_of=get_method,
            stats=self.stats,
        )
        self.export_dir = pathlib.Path(export_dir) if export_dir is not None else None
        self.opacity = 0.75
        self.colorscale = plots.DEFAULT_COLORSCALE
        if explanation is not None:
            self.state.seed(explanation)
        with self._lock:
            self.state.apply()  # raises on bad arguments, as explain() would
        check_atlas(atlas, self.state.current)  # an atlas of another layer: say so now
        rule = self.state.current.params.get("combine")  # the class card's rule; follows the shown one
        self._cam_rule = rule if rule in cam_rules() else next(iter(cam_rules()), None)
        self._build()
        self._render_all()  # (it also asks the worker for the neurons' drops: after the display)

    def _settings(self, explanation: Explanation | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The starting settings from the arguments (and the explanation to start from),
        checked as ``explain`` checks them; parameters of other methods are ignored, as
        ``explain`` ignores them."""
        methods = neuron_methods()
        if explanation is not None:
            # start from an explanation already computed for this image: no explain call
            if explanation.neurons is None:
                raise ValueError(f"explanation is a {explanation.method!r} one; NeuronExplorer needs one of {methods}")
            kwargs = {
                "method": explanation.method,
                "target": explanation.target,
                "layer": explanation.layer,
                **{n: v for n, v in explanation.params.items() if n in get_method(explanation.method).defaults()},
                "k": len(explanation.neurons),
                **kwargs,
            }
        method = kwargs.pop("method", methods[0] if methods else None)
        if method not in methods:
            raise ValueError(
                f"method={method!r}: NeuronExplorer shows neurons, so it needs one of {methods}; "
                "use MethodComparison for the other methods"
            )
        target, layer = kwargs.pop("target", None), kwargs.pop("layer", None)
        m = get_method(method)
        m.make_params(kwargs)  # unknown names and bad values raise here, as in explain
        own = {n: v for n, v in kwargs.items() if n in m.defaults() and v is not None}
        if "threshold" in own:
            own["threshold"] = float(own["threshold"])
        target = None if target is None else self.bundle.class_index(target)
        return {"method": method, "target": target, "layer": layer, **own}

    # ------------------------------------------------------------------ public state
    @property
    def settings(self) -> dict[str, Any]:
        """The settings shown: method, target, layer, enabled and the method's parameters."""
        return dict(self.state.applied)

    def set(self, **settings: Any) -> None:
        """Change several settings at once, by name (``target``, ``layer``, ``method``,
        ``enabled`` and the method's parameters, a registered method's own included): one
        update, in this thread; raises on a bad value and keeps the state shown. A change of
        a parameter the method calls ``recombinable`` runs no pass."""
        if settings.get("target") is not None:
            settings["target"] = self.bundle.class_index(settings["target"])
        if settings.get("enabled") is not None:
            settings["enabled"] = tuple(sorted({int(r) for r in settings["enabled"]}))
        self._set(**settings)

    @property
    def explanation(self) -> Explanation:
        """The explanation on screen (``saliency`` and ``box`` follow :attr:`enabled`)."""
        return self.state.current

    @property
    def base_explanation(self) -> Explanation:
        """The explanation with all k neurons, as :func:`~fastloc_viz.explain` returned it."""
        return self.state.base

    @property
    def ablation(self):
        """:func:`fastloc_viz.ablate` of :attr:`base_explanation` once the worker computed it
        (``None`` before; :meth:`wait` waits for it)."""
        return self.effects.for_base(self.state.base)

    @property
    def enabled(self) -> tuple[int, ...]:
        """The ranks (1-based) of the neurons in the combined map. Settable."""
        e = self.state.current
        return tuple(e.params.get("enabled", [n.rank for n in e.neurons]))

    @enabled.setter
    def enabled(self, ranks: Sequence[int]) -> None:
        if isinstance(ranks, (int, np.integer)):
            ranks = (int(ranks),)
        self._set(enabled=tuple(sorted({int(r) for r in ranks})))

    @property
    def target(self) -> int:
        """The explained class index. Set it by index or by class name."""
        return self.state.current.target

    @target.setter
    def target(self, value: int | str | None) -> None:
        self._set(target=None if value is None else self.bundle.class_index(value))

    @property
    def target_name(self) -> str:
        return self.state.current.target_name

    @property
    def k(self) -> int:
        """How many neurons are kept. Settable (new explain call)."""
        return len(self.state.current.neurons)

    @k.setter
    def k(self, value: int) -> None:
        self._set(k=int(value))

    @property
    def layer(self) -> str:
        """The probe layer's dotted name. Settable."""
        return self.state.current.layer

    @layer.setter
    def layer(self, value: str) -> None:
        self._set(layer=value)

    @property
    def method(self) -> str:
        return self.state.current.method

    @method.setter
    def method(self, value: str) -> None:
        check_choice("method", value, neuron_methods())
        self._set(method=value)

    @property
    def rank_grad(self) -> str:
        return self.state.current.params.get("rank_grad", "plain")

    @rank_grad.setter
    def rank_grad(self, value: str) -> None:
        check_choice("rank_grad", value, RANK_GRADS)
        self._set(rank_grad=value)

    @property
    def threshold(self) -> float:
        return float(self.state.current.params["threshold"])

    @threshold.setter
    def threshold(self, value: float) -> None:
        check_threshold(value)
        self._set(threshold=float(value))

    # ------------------------------------------------------------------ changing
    def _apply(self) -> str:
        """The one path from wanted to shown (call with the lock held): computes, with a
        progress bar when an explain call is needed, then redraws what changed. Raises,
        leaving the old state shown and the controls back on it."""
        cost = self.state.cost()
        try:
            if cost == EXPLAIN:
                with self._ticking("explaining…"):
                    cost = self.state.apply()
            else:
                cost = self.state.apply()
        except Exception:
            self._set_progress(None)
            if hasattr(self, "widget"):
                self._sync_controls()
            raise
        self._set_progress(None)
        if cost == NOTHING:
            if hasattr(self, "widget"):
                self._sync_controls()
        elif cost == RECOMBINE:
            self._render_light()
        else:
            self._render_all()
        return cost

    def _set(self, **changes: Any) -> None:
        """Programmatic change: synchronous, raises on error, leaves the old state on error."""
        with self._lock:
            self.state.want(**changes)
            self._apply()

    def _request(self, **changes: Any) -> None:
        """UI change: record it; apply a cheap one now, in the handler (a toggle is
        instant), and leave an expensive one to the debounced worker."""
        cost = self.state.want(**changes)
        if cost in (NOTHING, RECOMBINE) and self._lock.acquire(blocking=False):
            try:
                t0 = time.perf_counter()
                self._apply()
                if cost == RECOMBINE:
                    self.stats.setdefault("light_ms", []).append((time.perf_counter() - t0) * 1000)
                    self._status(self.explanation)
            finally:
                self._lock.release()
            return
        self._debouncer.poke()

    def _work(self) -> None:
        """Worker thread: bring the widget to the latest wanted state, then make sure the
        shown explanation's drops are known."""
        with self._lock:
            if self.state.pending:
                want = dict(self.state.wanted)
                try:
                    self._apply()
                except Exception as err:  # noqa: BLE001 - shown in the widget
                    self._show_error(err, f"computing {self.state.describe(want, self.bundle.target_names)}")
                else:
                    self._show_error(None)
            base = self.state.base
            self._show_shares()
        if self.effects.ready(base):
            return
        # Outside this widget's lock (its passes wait for the model's): a toggle meanwhile
        # applies at once, from the cached maps.
        try:
            self.effects.compute(base)
        except Exception as err:  # noqa: BLE001 - shown in the widget
            self._show_error(err, "computing what each neuron does to the prediction (fv.ablate)")
            self.without.value = "<span class='flv-muted'>the neurons' drops could not be computed</span>"
            return
        with self._lock:
            if hasattr(self, "widget") and self.state.base is base:
                self._show_effects()

    def _show_shares(self) -> None:
        """How much of the box each card drew (one smoothing, so off the toggle's own path)."""
        e = self.explanation
        if hasattr(self, "widget") and self._shares_for is not e:
            self.cards.show_shares(e, neuron_shares(e))
            self._shares_for = e

    def _show_effects(self) -> None:
        """Drops on the cards, their order, the without-line (when the ablation is known)."""
        e, base = self.explanation, self.state.base
        a = self.effects.for_base(base)
        if a is not None:
            self.cards.show_drops(e, a)
        self.cards.order(e, a if self.sort_by == "drop" else None)
        self.without.value = without_html(base, a, self.enabled, self.effects.without(base, self.enabled))

    def _sort(self, by: str) -> None:
        check_choice("sort", by, ("rank", "drop"))
        self.sort_by = by
        self._show_effects()

    def _want_target(self, index: int) -> None:
        self._request(target=index)

    def _toggle(self, rank: int, on: bool) -> None:
        wanted = self.state.wanted["enabled"]
        enabled = set(wanted or [n.rank for n in self.explanation.neurons])
        enabled = enabled | {rank} if on else enabled - {rank}
        self._request(enabled=tuple(sorted(enabled)))

    def _toggle_class_map(self, on: bool) -> None:
        self._request(combine=self._cam_rule if on else "sum")

    def _ui(self, fn, context: str) -> None:
        if self._muted:
            return
        self._guarded(fn, context)

    def _restyle(self, opacity: float | None = None, colorscale: str | None = None) -> None:
        charts.restyle(self.overlay_fig, opacity, colorscale)  # raises for unknown colour scales
        if opacity is not None:
            self.opacity = float(opacity)
        if colorscale is not None:
            self.colorscale = colorscale
            self.cards.render(self.explanation, self.colorscale, rebuild=True, atlas=self._atlas_for(self.explanation))
            self._show_effects()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        e = self.explanation
        build_controls(self)
        self.export_button = W.Button(
            description="Export", icon="download", tooltip=EXPORT_TIP, layout=W.Layout(width="100px")
        )
        self.export_out = W.HTML()
        self.export_button.on_click(lambda _b: self._guarded(self._export_clicked, "exporting"))
        self.overlay_fig = go.FigureWidget(charts.overlay_figure(e, self.enabled, self.opacity, self.colorscale))
        self.bars_fig = go.FigureWidget(charts.bars_figure(e, self.enabled))
        self.top5_box = W.VBox(layout=W.Layout(width="430px"))
        self.cards = Cards(
            on_toggle=lambda rank, on: self._ui(lambda: self._toggle(rank, on), "toggling a neuron"),
            on_class_map=lambda on: self._ui(lambda: self._toggle_class_map(on), "toggling the class map"),
        )
        self._cards, self.class_card, self.cards_box = self.cards.cards, self.cards.class_card, self.cards.row
        self.sort_buttons = W.ToggleButtons(
            options=[("by rank", "rank"), ("by drop", "drop")],
            value="rank",
            tooltips=["the ranking's order", "largest probability drop first (channel zeroed)"],
            style={"button_width": "72px"},
        )
        self.sort_buttons.observe(
            lambda c: self._ui(lambda: self._sort(c["new"]), "sorting the neurons"), names="value"
        )
        self.similarity = W.HTML()
        self.without = W.HTML()

        header = W.HTML(
            CSS + f"<p class='flv-title'>NeuronExplorer · {html.escape(self.bundle.name)}</p>"
            "<span class='flv-muted'>Tick neurons to rebuild the map from cached maps (no backward "
            "pass); class, k, layer, rank grad and method recompute.</span>"
        )
        row = lambda *children: W.HBox(list(children), layout=W.Layout(flex_flow="row wrap"))  # noqa: E731
        label = W.Label("rank grad", layout=W.Layout(margin="0 6px 0 16px"))
        controls = W.VBox(
            [
                row(self.class_box, self.method_buttons),
                self.class_message,
                row(self.k_slider, self.layer_dropdown, label, self.rank_grad_buttons),
                row(self.threshold_slider, self.combine_dropdown, self.opacity_slider, self.colorscale_dropdown),
            ]
        )
        right = W.VBox(
            [
                self.bars_fig,
                W.HTML(
                    f"<b style='font-size:13px'>{html.escape(e.top_title)}</b> "
                    "<span class='flv-muted'>(click to explain)</span>"
                ),
                self.top5_box,
            ]
        )
        self.widget = W.VBox(
            [
                header,
                controls,
                W.HBox([self.progress, self.status], layout=W.Layout(align_items="center")),
                self.error,
                row(self.overlay_fig, right),
                W.HBox(
                    [
                        W.HTML(
                            "<b style='font-size:13px'>Neurons</b> <span class='flv-muted'>(left: guided-backprop "
                            "map; right: where its channel fires; square: its cell on the layer grid; dotted: "
                            "the extent of its map)</span>"
                        ),
                        self.sort_buttons,
                    ],
                    layout=W.Layout(align_items="center", justify_content="space-between"),
                ),
                self.similarity,
                self.cards_box,
                self.without,
                W.HBox([self.export_button, self.export_out], layout=W.Layout(align_items="center")),
            ],
            layout=W.Layout(padding="6px"),
        )
        self.widget.add_class("fastloc-explorer")

    # ------------------------------------------------------------------ rendering
    def _render_light(self) -> None:
        """After a toggle / threshold / combine change: map, box, bars, cards' state."""
        if not hasattr(self, "widget"):
            return
        t0 = time.perf_counter()
        charts.update_light(self.overlay_fig, self.bars_fig, self.explanation, self.enabled)
        self._debouncer.poke()  # the neurons' shares of the box: on the worker, after this display
        self._sync_controls()
        base = self.state.base
        a = self.effects.for_base(base)
        self.without.value = without_html(base, a, self.enabled, self.effects.without(base, self.enabled))
        self._status(self.explanation)
        self.stats["update_ms"].append((time.perf_counter() - t0) * 1000)

    def _render_all(self) -> None:
        """After a new explanation: figures, top-5, cards, then the light part."""
        if not hasattr(self, "widget"):
            return
        e = self.explanation
        self._set_progress(0.85, "drawing…")
        charts.redraw(self.overlay_fig, self.bars_fig, e, self.enabled, self.opacity, self.colorscale)
        old = self.top5_box.children
        self.top5_box.children = top5_buttons(
            e, lambda i: self._ui(lambda: self._request(target=i), "choosing a class")
        )
        for w in old:
            w.close()
        self._show_class_options(e)
        atlas = self._atlas_for(e)
        self.cards.render(e, self.colorscale, rebuild=True, atlas=atlas)
        note = similarity_note(e)
        if self.atlas is not None and atlas is None:
            note += f" (The atlas is for layer {self.atlas.layer}: no strips at {e.layer}.)"
        self.similarity.value = f"<span class='flv-muted flv-similarity'>{html.escape(note)}</span>"
        self._render_light()
        if self.effects.ready(self.state.base):
            self._show_effects()
        else:
            self.cards.order(e)
            self._debouncer.poke()  # the drops: on the worker thread, after this display
        self._set_progress(None)

    def _atlas_for(self, e: Explanation):
        """The atlas when it is for ``e``'s probe layer, else ``None``."""
        try:
            check_atlas(self.atlas, e)
        except ValueError:
            return None
        return self.atlas

    def _sync_controls(self) -> None:
        """Make the controls show the applied state (after code set it, or after an error)."""
        e = self.explanation
        sync_controls(self)
        if list(self.class_box.options) != self._options:
            self._set_quiet(self.class_box, options=self._options)
        self._set_quiet(self.class_box, value=self._class_label(e, e.target))
        use_cam = e.params["combine"] in cam_rules()
        if use_cam:
            self._cam_rule = e.params["combine"]
        self.cards.sync(e, self.enabled, self._cam_rule, use_cam, self._set_quiet)

    def _status(self, e: Explanation) -> None:
        last = self.stats["explain_s"][-1] if self.stats["explain_s"] else e.time_s
        light = self.stats.get("light_ms")
        tog = f" · last update {light[-1]:.0f} ms" if light else ""
        self.status.value = (
            f"<span class='flv-stat'>{html.escape(e.target_name)} ({e.target}) · layer <code>{html.escape(str(e.layer))}</code>"
            f" · {'no box (all-zero map)' if e.box is None else f'box {tuple(e.box)}'} · explain {last * 1000:.0f} ms{tog}</span>"
        )

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike[str] | None = None, *, png: bool | None = None) -> list[pathlib.Path]:
        """Save the current state: ``<stem>.html`` (self-contained report), ``<stem>.json``
        (the explanation's metadata, the enabled ranks and the controls' values) and, when
        ``png`` is true or ``None`` and kaleido can find a Chrome/Chromium, ``<stem>.png``.
        Each file is written atomically.

        Args:
            path: the stem (``.html``/``.json``/``.png`` are appended; an existing suffix is
                dropped) or an existing directory; default: a timestamped name in
                ``export_dir`` or the current directory.
            png: ``True`` requires a PNG (raises if it cannot be made), ``False`` skips it.

        Returns:
            The files written.
        """
        e = self.explanation
        controls = {
            "enabled": list(self.enabled),
            "k": self.k,
            "layer": self.layer,
            "method": self.method,
            "rank_grad": self.rank_grad,
            "threshold": self.threshold,
            "model": self.bundle.name,
        }
        return export_state(export_stem(e, path, self.export_dir), e, controls, self.overlay_fig, png=png)

    def _export_clicked(self) -> None:
        self._set_progress(0.5, "exporting…")
        try:
            files = self.export()
        finally:
            self._set_progress(None)
        self.export_out.value = (
            "<span class='flv-stat'>wrote "
            + ", ".join(f"<code>{html.escape(str(f))}</code>" for f in files)
            + "</span>"
        )
