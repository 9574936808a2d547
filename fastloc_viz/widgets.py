"""Jupyter widgets: :class:`NeuronExplorer` and :class:`MethodComparison`.

Standard ipywidgets and plotly ``FigureWidget`` only (no frontend extension to install), so
they work in JupyterLab 4, Notebook 7 and VS Code. Display a widget by leaving it as the
last expression of a cell.

How they stay responsive:

* **Cheap changes run at once.** Toggling a neuron, moving the box threshold or changing the
  combination rule recomputes the map and the box from the cached neuron maps
  (:func:`fastloc_viz.fastloc.recombine`): no forward or backward pass.
* **Expensive changes are debounced on a worker thread.** A new class, ``k``, layer,
  ``rank_grad`` or method needs a new :func:`fastloc_viz.explain` call. Events from the
  controls only record the wanted state; a worker thread waits until the events stop for
  ``debounce`` seconds, then brings the widget to the *latest* wanted state. A burst of
  slider events therefore costs at most one computation in flight plus one for the final
  state, never one per event. Progress shows while it works.
* **Errors are shown, not swallowed.** An exception raised by a control's callback appears
  in the widget's error box (type, message, and the traceback folded), the controls return
  to the last good state, and the widget keeps working.
* **Programmatic access** (``explorer.target = "tiger cat"``, ``explorer.k = 3``,
  ``explorer.enabled = (1, 2)``) runs synchronously in the caller's thread and raises on
  bad values, for scripts and tests.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import pathlib
import statistics
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from PIL import Image as PILImage

from . import plots
from .combine import RULES, cam_rules, recombine
from .explaining import explain
from .explanation import Box, Explanation
from .fastloc import RANK_GRADS
from .files import write_text_atomic
from .hooks import probe_layer_options
from .maps import map_to_box
from .methods import METHODS, get_method, methods_where
from .models import ModelBundle, bundle_of
from .report import write_report

log = logging.getLogger("fastloc_viz")

__all__ = ["NeuronExplorer", "MethodComparison"]

FASTLOC_METHODS = methods_where(lambda m: m.has_neurons)
COLORSCALES = ("Inferno", "Viridis", "Jet", "Hot", "Turbo", "Greys")
_HEAVY = ("method", "target", "k", "kmax", "layer", "rank_grad")
_CACHE_SIZE = 12
# The combined map is smooth (a Gaussian of ~16 px at 224 px): a coarser heatmap, drawn with
# plotly's interpolation, looks the same and makes each toggle's update 2x smaller.
_MAP_SIDE = 80

_CSS = """
<style>
.flv-card { border-radius: 8px; }
.flv-title { font-size: 15px; font-weight: 600; margin: 0; }
.flv-muted { color: #5b6578; font-size: 12px; }
.flv-err { background:#fff1f0; border:1px solid #f3b7b3; color:#8a1c13; padding:6px 10px;
           border-radius:6px; font-size:13px; }
.flv-err pre { white-space: pre-wrap; font-size: 11px; max-height: 180px; overflow:auto; }
.flv-stat { font-size: 12px; color:#5b6578; }
.flv-neuron { font-size: 11.5px; line-height: 1.35; font-variant-numeric: tabular-nums; }
</style>
"""


# ----------------------------------------------------------------------------- helpers
def _png(rgb_uint8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb_uint8).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _morph(fw: go.FigureWidget, new: go.Figure) -> None:
    """Make FigureWidget ``fw`` look like ``new`` in one batched update."""
    extra = len(new.data) - len(fw.data)
    if extra > 0:
        fw.add_traces([go.Scatter(x=[], y=[], visible=False) for _ in range(extra)])
    with fw.batch_update():
        for i, trace in enumerate(fw.data):
            if i < len(new.data):
                spec = new.data[i].to_plotly_json()
                spec.pop("type", None)
                if trace.type != new.data[i].type:
                    continue  # _morph only keeps trace types; callers build matching figures
                trace.update(spec, overwrite=True)
                trace.visible = spec.get("visible", True)
            else:
                trace.visible = False
        fw.layout.update(new.layout.to_plotly_json(), overwrite=True)


def _close_tree(widget: W.Widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def _error_html(err: BaseException, context: str) -> str:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return (
        f"<div class='flv-err'><b>{html.escape(type(err).__name__)}</b> while {html.escape(context)}: "
        f"{html.escape(str(err))}<details><summary>traceback</summary><pre>{html.escape(tb)}</pre>"
        "</details><span class='flv-muted'>The widget kept its last good state; keep going.</span></div>"
    )


class _Debouncer:
    """Runs ``work()`` on a daemon thread once events stop for ``delay`` seconds.

    ``poke()`` is cheap and never blocks: it only records that work is wanted. ``work`` must
    bring the widget to its latest wanted state, so intermediate events are skipped.
    """

    def __init__(self, work: Callable[[], None], delay: float) -> None:
        self._work = work
        self.delay = delay
        self._last = 0.0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = False
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fastloc-viz-widget", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            self._pending = True
            self._idle.clear()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no work is pending or running; ``False`` on timeout."""
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """End the worker thread (after any work in flight)."""
        self._stopped = True
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                self._idle.set()
                return
            while True:  # let the burst settle
                with self._lock:
                    remaining = self._last + self.delay - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(remaining)
            with self._lock:
                self._pending = False
            try:
                self._work()
            except Exception:  # work() reports its own errors; never kill the thread
                log.exception("fastloc_viz widget worker")
            with self._lock:
                if not self._pending:
                    self._idle.set()


# ----------------------------------------------------------------------------- base
class _Base:
    """Shared plumbing: bundle, image, class selector, progress, errors, debouncing."""

    def __init__(self, model_or_bundle: ModelBundle | Any, image: Any, debounce: float) -> None:
        from .images import is_batch

        if is_batch(image):
            raise ValueError(
                f"the widgets explain one image, got a batch ({type(image).__name__} of "
                f"{len(image)}); pass one of them, or use fastloc_viz.explain for batches"
            )
        self.bundle: ModelBundle = bundle_of(model_or_bundle)
        self.image = image
        self._lock = threading.RLock()  # one computation at a time
        self._muted = 0  # > 0 while controls are set by code (their observers must not fire)
        self._debouncer = _Debouncer(self._work, debounce)
        self.stats: dict[str, Any] = {
            "explain_calls": 0,
            "recombine_calls": 0,
            "errors": 0,
            "explain_s": [],
            "update_ms": [],
        }
        names = self.bundle.class_names
        self._class_labels = [f"{n} ({i})" for i, n in enumerate(names)]
        self._label_to_index: dict[str, int] = {lab: i for i, lab in enumerate(self._class_labels)}
        self.progress = W.FloatProgress(
            value=0,
            min=0,
            max=1,
            description="",
            bar_style="info",
            layout=W.Layout(width="160px", visibility="hidden"),
        )
        self.status = W.HTML(layout=W.Layout(margin="0 0 0 8px"))
        self.error = W.HTML(layout=W.Layout(display="none"))
        self.class_box = W.Combobox(
            placeholder="type to search 1000 classes…",
            ensure_option=True,
            description="class",
            layout=W.Layout(width="360px", margin="0 12px 0 0"),
            style={"description_width": "42px"},
        )
        self.class_box.observe(self._on_class, names="value")

    # --- class selector
    def _class_options(self, expl: Explanation) -> list[str]:
        top = [f"★ {p.name} ({p.index})" for p in expl.top5]
        for lab, p in zip(top, expl.top5):
            self._label_to_index[lab] = p.index
        top_idx = {p.index for p in expl.top5}
        return top + [lab for i, lab in enumerate(self._class_labels) if i not in top_idx]

    def _class_label(self, expl: Explanation, index: int) -> str:
        if any(p.index == index for p in expl.top5):
            return f"★ {self.bundle.class_names[index]} ({index})"
        return self._class_labels[index]

    def _on_class(self, change: dict) -> None:
        if self._muted or not change["new"]:
            return
        index = self._label_to_index.get(change["new"])
        if index is not None:
            self._want_target(index)

    def _want_target(self, index: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # --- progress, errors, muting
    def _set_progress(self, value: float | None, text: str = "") -> None:
        if value is None:
            self.progress.layout.visibility = "hidden"
            return
        self.progress.layout.visibility = "visible"
        self.progress.value = value
        self.progress.description = text

    @contextlib.contextmanager
    def _ticking(self, text: str) -> Iterator[None]:
        """Show progress while a computation of unknown length runs: the bar moves towards
        90 % at the pace of the previous computations and shows the elapsed time."""
        if not hasattr(self, "widget"):
            yield
            return
        past = self.stats["explain_s"]
        expected = max(statistics.median(past[-5:]) if past else 1.0, 0.1)
        stop = threading.Event()
        t0 = time.monotonic()

        def tick() -> None:
            while not stop.wait(0.2):
                elapsed = time.monotonic() - t0
                self._set_progress(
                    0.1 + 0.8 * (1 - math.exp(-elapsed / expected)), f"{text} {elapsed:.1f} s"
                )

        self._set_progress(0.1, text)
        ticker = threading.Thread(target=tick, name="fastloc-viz-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()

    def _show_error(self, err: BaseException | None, context: str = "") -> None:
        if err is None:
            if self.error.layout.display != "none":
                self.error.layout.display = "none"
                self.error.value = ""
            return
        self.stats["errors"] += 1
        self.error.value = _error_html(err, context)
        self.error.layout.display = "block"

    def _guarded(self, fn: Callable[[], None], context: str) -> None:
        """Run a UI callback; show any exception in the widget instead of losing it."""
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - shown to the user, widget keeps going
            self._show_error(err, context)
            self._set_progress(None)
        else:
            self._show_error(None)

    def _set_quiet(self, widget: W.Widget, **values: Any) -> None:
        self._muted += 1
        try:
            for key, value in values.items():
                if getattr(widget, key) != value:
                    setattr(widget, key, value)
        finally:
            self._muted -= 1

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until pending UI-triggered work is done (for scripts and tests)."""
        return self._debouncer.wait(timeout)

    def _work(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Remove the widget from the page and end its worker thread."""
        self._debouncer.stop()
        if hasattr(self, "widget"):
            _close_tree(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:  # older IPython/VS Code
        from IPython.display import display

        display(self.widget)


# ----------------------------------------------------------------------------- explorer
class NeuronExplorer(_Base):
    """Explore a FastLoc explanation neuron by neuron.

    Layout: the image with the combined map and box; one card per neuron (map thumbnail,
    rank, score, activation, gradient, and a checkbox); the rank-score bar chart; the top-5
    predictions. Controls: class (top-5 first, then all classes, searchable), method
    (``fastloc`` / ``fastloc_rescored``), ``rank_grad``, ``k``, layer, combination rule, box
    threshold, map opacity and colours, and an export button.

    Args:
        model_or_bundle: a :class:`~fastloc_viz.models.ModelBundle` or an ``nn.Module``.
        image: anything :func:`~fastloc_viz.explain` accepts (path, PIL, array, tensor).
        debounce: seconds of quiet after the last control event before a recomputation.
        export_dir: where the export button writes (default: the current directory).
        explanation: a fastloc explanation already computed for ``image`` (by
            :func:`~fastloc_viz.explain` with the same model): the explorer starts from it
            instead of computing it again.
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
        **explain_kwargs: Any,
    ) -> None:
        super().__init__(model_or_bundle, image, debounce)
        if explanation is not None:
            # start from an explanation already computed for this image: no explain call
            if explanation.neurons is None:
                raise ValueError(
                    f"explanation is a {explanation.method!r} one; NeuronExplorer needs one of {FASTLOC_METHODS}"
                )
            p = explanation.params
            explain_kwargs = {
                "method": explanation.method,
                "target": explanation.target,
                "layer": explanation.layer,
                "k": len(explanation.neurons),
                "rank_grad": p.get("rank_grad", "plain"),
                "threshold": p.get("threshold", 0.3),
                **explain_kwargs,
            }
        method = explain_kwargs.pop("method", "fastloc")
        if method not in FASTLOC_METHODS:
            raise ValueError(
                f"method={method!r}: NeuronExplorer shows neurons, so it needs one of {FASTLOC_METHODS}; "
                "use MethodComparison for the other methods"
            )
        target = explain_kwargs.pop("target", None)
        self._want: dict[str, Any] = {
            "method": method,
            "target": None if target is None else self.bundle.class_index(target),
            "k": int(explain_kwargs.pop("k", 5)),
            "kmax": explain_kwargs.pop("kmax", None),
            "layer": explain_kwargs.pop("layer", None),
            "rank_grad": explain_kwargs.pop("rank_grad", "plain"),
            "threshold": float(explain_kwargs.pop("threshold", 0.3)),
            "combine": explain_kwargs.pop("combine", None),
            "enabled": None,
        }
        self._extra = dict(explain_kwargs)  # sigma, components, passes, ...
        self._cache: OrderedDict[tuple, Explanation] = OrderedDict()
        self._base: Explanation | None = None  # from explain(): all k neurons
        self._current: Explanation | None = None  # after recombine(): what is shown
        self._have: dict[str, Any] = {}
        self.export_dir = pathlib.Path(export_dir) if export_dir is not None else None
        self.opacity = 0.75
        self.colorscale = plots.DEFAULT_COLORSCALE
        if explanation is not None:
            self._cache[self._key(self._want)] = explanation

        with self._lock:
            self._compute(dict(self._want))  # raises on bad arguments, as explain() would
            self._want = dict(self._have)  # the resolved target and layer
        self._build()
        self._render_all()

    # ------------------------------------------------------------------ public state
    @property
    def explanation(self) -> Explanation:
        """The explanation on screen (``saliency`` and ``box`` follow :attr:`enabled`)."""
        assert self._current is not None
        return self._current

    @property
    def base_explanation(self) -> Explanation:
        """The explanation with all k neurons, as :func:`~fastloc_viz.explain` returned it."""
        assert self._base is not None
        return self._base

    @property
    def enabled(self) -> tuple[int, ...]:
        """The ranks (1-based) of the neurons in the combined map. Settable."""
        return tuple(self._current.params.get("enabled", [n.rank for n in self._current.neurons]))

    @enabled.setter
    def enabled(self, ranks: Sequence[int]) -> None:
        if isinstance(ranks, (int, np.integer)):
            ranks = (int(ranks),)
        self._set(enabled=tuple(sorted({int(r) for r in ranks})))

    @property
    def target(self) -> int:
        """The explained class index. Set it by index or by class name."""
        return self._current.target

    @target.setter
    def target(self, value: int | str | None) -> None:
        self._set(target=None if value is None else self.bundle.class_index(value))

    @property
    def target_name(self) -> str:
        return self._current.target_name

    @property
    def k(self) -> int:
        """How many neurons are kept. Settable (new explain call)."""
        return len(self._current.neurons)

    @k.setter
    def k(self, value: int) -> None:
        self._set(k=int(value))

    @property
    def layer(self) -> str:
        """The probe layer's dotted name. Settable."""
        return self._current.layer

    @layer.setter
    def layer(self, value: str) -> None:
        self._set(layer=value)

    @property
    def method(self) -> str:
        return self._current.method

    @method.setter
    def method(self, value: str) -> None:
        if value not in FASTLOC_METHODS:
            raise ValueError(f"method={value!r} is not one of {FASTLOC_METHODS}")
        self._set(method=value)

    @property
    def rank_grad(self) -> str:
        return self._current.params.get("rank_grad", "plain")

    @rank_grad.setter
    def rank_grad(self, value: str) -> None:
        if value not in RANK_GRADS:
            raise ValueError(f"rank_grad={value!r} is not one of {RANK_GRADS}")
        self._set(rank_grad=value)

    @property
    def threshold(self) -> float:
        return float(self._current.params["threshold"])

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"threshold={value!r} must be a fraction of the map's maximum in [0, 1]"
            )
        self._set(threshold=float(value))

    def _set(self, **changes: Any) -> None:
        """Programmatic change: synchronous, raises on error, leaves the old state on error."""
        with self._lock:
            want = {**self._have, **changes}
            if any(want[key] != self._have.get(key) for key in _HEAVY) and "enabled" not in changes:
                want["enabled"] = None
            if want["method"] != self._have["method"] and "combine" not in changes:
                want["combine"] = None  # each method's own default rule
            heavy = self._key(want) != self._key(self._have)
            try:
                with self._progress_for(want):
                    self._compute(want)
            finally:
                self._set_progress(None)
            self._want = dict(self._have)
            self._render_all() if heavy else self._render_light()

    def _progress_for(self, want: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        """A progress bar when ``want`` needs a new explain call, nothing when it is cached."""
        if self._key(want) in self._cache:
            return contextlib.nullcontext()
        return self._ticking("explaining…")

    # ------------------------------------------------------------------ computing
    def _key(self, s: Mapping[str, Any]) -> tuple:
        return tuple(s[key] for key in _HEAVY)

    def _compute(self, want: dict[str, Any]) -> None:
        """Bring ``_base`` / ``_current`` to ``want``; raises, leaving the old state, on error."""
        key = self._key(want)
        base = self._cache.get(key)
        if base is None:
            kwargs = dict(self._extra)
            if want["kmax"] is not None:
                kwargs["kmax"] = want["kmax"]
            elif want["method"] == "fastloc_rescored":
                kwargs["kmax"] = max(10, 2 * want["k"])
            else:
                kwargs["kmax"] = max(want["k"], 10)
            if want["combine"] is not None:
                kwargs["combine"] = want["combine"]
            t0 = time.perf_counter()
            base = explain(
                self.bundle,
                self.image,
                method=want["method"],
                target=want["target"],
                layer=want["layer"],
                k=want["k"],
                rank_grad=want["rank_grad"],
                threshold=want["threshold"],
                **kwargs,
            )
            self.stats["explain_calls"] += 1
            self.stats["explain_s"].append(time.perf_counter() - t0)
            self._cache[key] = base
            # the resolved target and layer: asking for them again hits the cache
            resolved = dict(want, target=base.target, layer=base.layer)
            self._cache[self._key(resolved)] = base
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        ranks = [n.rank for n in base.neurons]
        enabled = ranks if want["enabled"] is None else list(want["enabled"])
        # None: the method's default rule (a cached base may carry another rule from before)
        combine = want["combine"] or get_method(want["method"]).defaults()["combine"]
        current = recombine(base, enabled, threshold=want["threshold"], combine=combine)
        self.stats["recombine_calls"] += 1
        self._base, self._current = base, current
        self._have = dict(
            want,
            target=base.target,
            layer=base.layer,
            combine=current.params["combine"],
            enabled=tuple(current.params["enabled"]),
        )

    def _work(self) -> None:
        """Worker thread: bring the widget to the latest wanted state (see _Debouncer)."""
        with self._lock:
            want = dict(self._want)
            if want == self._have:
                return
            heavy = self._key(want) != self._key(self._have)
            try:
                with self._progress_for(want):
                    self._compute(want)
            except Exception as err:  # noqa: BLE001 - shown in the widget
                self._want = dict(self._have)
                self._show_error(err, f"computing {self._describe(want)}")
                self._set_progress(None)
                self._sync_controls()
                return
            if self._want == want:  # no newer request came in meanwhile
                self._want = dict(self._have)
            self._set_progress(0.85, "drawing…")
            try:
                self._render_all() if heavy else self._render_light()
            except Exception as err:  # noqa: BLE001
                self._show_error(err, "drawing")
            else:
                self._show_error(None)
            self._set_progress(None)

    def _describe(self, s: Mapping[str, Any]) -> str:
        t = "top-1" if s["target"] is None else repr(self.bundle.class_names[s["target"]])
        return f"{s['method']} for class {t}, k={s['k']}, layer={s['layer']!r}, rank_grad={s['rank_grad']!r}"

    def _request(self, **changes: Any) -> None:
        """UI change: record it; apply cheap changes now, leave expensive ones to the worker.

        Cheap (the same explanation, recombined: toggles, threshold, combine) run in the
        event handler itself, which keeps a toggle instant; expensive ones are debounced.
        """
        if any(key in _HEAVY for key in changes):
            changes.setdefault("enabled", None)
        if changes.get("method", self._want["method"]) != self._want["method"]:
            changes.setdefault("combine", None)  # each method's own default rule
        self._want.update(changes)
        if self._key(self._want) == self._key(self._have) and self._lock.acquire(blocking=False):
            try:
                t0 = time.perf_counter()
                want = dict(self._want)
                try:
                    self._compute(want)
                except Exception:
                    self._want = dict(self._have)
                    self._sync_controls()
                    raise
                if self._want == want:
                    self._want = dict(self._have)
                self._render_light()
                self.stats.setdefault("light_ms", []).append((time.perf_counter() - t0) * 1000)
                self._status(self._current)
            finally:
                self._lock.release()
            return
        self._debouncer.poke()

    def _want_target(self, index: int) -> None:
        self._request(target=index)

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        e = self._current
        b = self.bundle
        sty = {"description_width": "initial"}
        self.method_buttons = W.ToggleButtons(
            options=list(FASTLOC_METHODS),
            value=e.method,
            tooltips=[
                "rank, keep k, guided-backprop each",
                "rescore kmax candidates by masked forwards",
            ],
            style={"button_width": "140px"},
        )
        self.rank_grad_buttons = W.ToggleButtons(
            options=list(RANK_GRADS),
            value=self.rank_grad,
            tooltips=[
                "guided gradient for the ranking (the authors')",
                "plain gradient for the ranking",
            ],
            style={"button_width": "74px"},
        )
        self.k_slider = W.IntSlider(
            value=self.k,
            min=1,
            max=20,
            description="k",
            continuous_update=True,
            layout=W.Layout(width="230px"),
            style={"description_width": "20px"},
        )
        self.layer_dropdown = W.Dropdown(
            options=probe_layer_options(b.model, e.layer),
            value=e.layer,
            description="layer",
            layout=W.Layout(width="220px"),
            style={"description_width": "40px"},
        )
        self.threshold_slider = W.FloatSlider(
            value=self.threshold,
            min=0.0,
            max=1.0,
            step=0.05,
            description="box threshold",
            continuous_update=True,
            readout_format=".2f",
            layout=W.Layout(width="300px"),
            style=sty,
        )
        self.combine_dropdown = W.Dropdown(
            options=list(RULES),
            value=e.params["combine"],
            description="combine",
            layout=W.Layout(width="170px"),
            style={"description_width": "58px"},
        )
        self.opacity_slider = W.FloatSlider(
            value=self.opacity,
            min=0.0,
            max=1.0,
            step=0.05,
            description="opacity",
            readout_format=".2f",
            layout=W.Layout(width="240px"),
            style={"description_width": "52px"},
        )
        self.colorscale_dropdown = W.Dropdown(
            options=list(COLORSCALES),
            value=self.colorscale,
            description="colours",
            layout=W.Layout(width="170px"),
            style={"description_width": "52px"},
        )
        self.export_button = W.Button(
            description="Export",
            icon="download",
            tooltip=self._export_tip(),
            layout=W.Layout(width="100px"),
        )
        self.export_out = W.HTML()

        self.method_buttons.observe(
            lambda c: self._ui(lambda: self._request(method=c["new"]), "switching method"), "value"
        )
        self.rank_grad_buttons.observe(
            lambda c: self._ui(lambda: self._request(rank_grad=c["new"]), "changing rank_grad"),
            "value",
        )
        self.k_slider.observe(
            lambda c: self._ui(lambda: self._request(k=int(c["new"])), "changing k"), "value"
        )
        self.layer_dropdown.observe(
            lambda c: self._ui(lambda: self._request(layer=c["new"]), "changing the layer"), "value"
        )
        self.threshold_slider.observe(
            lambda c: self._ui(
                lambda: self._request(threshold=float(c["new"])), "changing the threshold"
            ),
            "value",
        )
        self.combine_dropdown.observe(
            lambda c: self._ui(lambda: self._request(combine=c["new"]), "changing the combination"),
            "value",
        )
        self.opacity_slider.observe(
            lambda c: self._ui(lambda: self._restyle(opacity=c["new"]), "changing the opacity"),
            "value",
        )
        self.colorscale_dropdown.observe(
            lambda c: self._ui(lambda: self._restyle(colorscale=c["new"]), "changing colours"),
            "value",
        )
        self.export_button.on_click(lambda _b: self._guarded(self._export_clicked, "exporting"))

        self.overlay_fig = go.FigureWidget(
            plots.overlay(
                e, opacity=self.opacity, colorscale=self.colorscale, size=400, max_side=_MAP_SIDE
            )
        )
        self.bars_fig = go.FigureWidget(
            plots.rank_scores(e, enabled=self.enabled, width=430, height=230)
        )
        self.top5_box = W.VBox(layout=W.Layout(width="430px"))
        self._cards: list[dict[str, W.Widget]] = []
        self.class_card = self._card()  # the probe layer's Grad-CAM, in the *_cam rules
        self._cam_rule = get_method("fastloc").defaults()["combine"]  # _sync_controls follows the shown rule
        self.class_card["check"].unobserve_all("value")
        self.class_card["box"].remove_class("flv-card")
        self.class_card["box"].add_class("flv-class-card")
        self.class_card["check"].observe(
            lambda c: self._ui(
                lambda: self._request(combine=self._cam_rule if c["new"] else "sum"),
                "toggling the class map",
            ),
            "value",
        )
        self.cards_box = W.HBox(layout=W.Layout(flex_flow="row wrap"))

        header = W.HTML(
            _CSS + f"<p class='flv-title'>NeuronExplorer · {html.escape(b.name)}</p>"
            "<span class='flv-muted'>Tick neurons to rebuild the map from cached maps (no backward "
            "pass); class, k, layer, rank grad and method recompute.</span>"
        )
        controls = W.VBox(
            [
                W.HBox(
                    [self.class_box, self.method_buttons], layout=W.Layout(flex_flow="row wrap")
                ),
                W.HBox(
                    [
                        self.k_slider,
                        self.layer_dropdown,
                        W.Label("rank grad", layout=W.Layout(margin="0 6px 0 16px")),
                        self.rank_grad_buttons,
                    ],
                    layout=W.Layout(flex_flow="row wrap"),
                ),
                W.HBox(
                    [
                        self.threshold_slider,
                        self.combine_dropdown,
                        self.opacity_slider,
                        self.colorscale_dropdown,
                    ],
                    layout=W.Layout(flex_flow="row wrap"),
                ),
            ]
        )
        right = W.VBox(
            [
                self.bars_fig,
                W.HTML(
                    "<b style='font-size:13px'>Top-5 predictions</b> "
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
                W.HBox([self.overlay_fig, right], layout=W.Layout(flex_flow="row wrap")),
                W.HTML(
                    "<b style='font-size:13px'>Neurons</b> <span class='flv-muted'>(guided-backprop map of each; "
                    "square: its cell on the layer grid; dotted: the extent of its map)</span>"
                ),
                self.cards_box,
                W.HBox(
                    [self.export_button, self.export_out], layout=W.Layout(align_items="center")
                ),
            ],
            layout=W.Layout(padding="6px"),
        )
        self.widget.add_class("fastloc-explorer")

    def _ui(self, fn: Callable[[], None], context: str) -> None:
        if self._muted:
            return
        self._guarded(fn, context)

    def _restyle(self, opacity: float | None = None, colorscale: str | None = None) -> None:
        if opacity is not None:
            self.opacity = float(opacity)
            self.overlay_fig.data[1].opacity = self.opacity
        if colorscale is not None:
            scale = plots.fading_colorscale(colorscale)  # raises for unknown names
            self.colorscale = colorscale
            self.overlay_fig.data[1].colorscale = scale
            self._render_cards(rebuild=True)

    # ------------------------------------------------------------------ rendering
    def _render_light(self) -> None:
        """After a toggle / threshold / combine change: map, box, bars, cards' state."""
        t0 = time.perf_counter()
        e = self._current
        on = set(self.enabled)
        z, _ = plots.downsample(e.saliency, _MAP_SIDE)
        x0, y0, x1, y1 = e.box
        with self.overlay_fig.batch_update():
            self.overlay_fig.data[1].z = z
            self.overlay_fig.layout.shapes[0].update(
                x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5
            )
            self.overlay_fig.layout.title.text = self._overlay_title(e)
        self.bars_fig.data[0].marker.color = [
            plots.ENABLED_COLOR if n.rank in on else plots.DISABLED_COLOR for n in e.neurons
        ]
        self._sync_controls()
        self._status(e)
        self.stats["update_ms"].append((time.perf_counter() - t0) * 1000)

    def _render_all(self) -> None:
        e = self._current
        if not hasattr(self, "widget"):
            return
        _morph(
            self.overlay_fig,
            plots.overlay(
                e,
                opacity=self.opacity,
                colorscale=self.colorscale,
                size=400,
                title=self._overlay_title(e),
                max_side=_MAP_SIDE,
            ),
        )
        _morph(self.bars_fig, plots.rank_scores(e, enabled=self.enabled, width=430, height=230))
        self._render_top5(e)
        self._render_cards(rebuild=True)
        self._render_light()

    def _overlay_title(self, e: Explanation) -> str:
        on = self.enabled
        k = len(e.neurons)
        used = "all" if len(on) == k else f"{len(on)}/{k}: #" + ",#".join(map(str, on))
        return f"{plots.method_label(e.method)} · {html.escape(e.target_name)} · neurons {used}"

    def _render_top5(self, e: Explanation) -> None:
        buttons = []
        for p in e.top5:
            b = W.Button(
                description=f"{p.name[:34]} · {p.probability:.1%}",
                tooltip=f"explain class {p.index}: {p.name}",
                layout=W.Layout(width="420px", height="28px"),
                button_style="info" if p.index == e.target else "",
            )
            b.on_click(
                lambda _b, i=p.index: self._ui(lambda: self._request(target=i), "choosing a class")
            )
            buttons.append(b)
        old = self.top5_box.children
        self.top5_box.children = buttons
        for w in old:
            w.close()
        self._set_quiet(self.class_box, options=self._class_options(e))

    def _card(self) -> dict[str, W.Widget]:
        img = W.Image(format="png", layout=W.Layout(width="150px", height="150px"))
        text = W.HTML()
        check = W.Checkbox(
            value=True, description="use", indent=False, layout=W.Layout(width="auto")
        )
        box = W.VBox(
            [img, text, check],
            layout=W.Layout(
                padding="4px", width="162px", margin="0 8px 8px 0", border="2px solid #3b6fd4"
            ),
        )
        box.add_class("flv-card")
        card = {"image": img, "text": text, "check": check, "box": box, "rank": 0}
        check.observe(
            lambda c, card=card: self._ui(
                lambda: self._toggle(card["rank"], c["new"]), "toggling a neuron"
            ),
            "value",
        )
        return card

    def _render_cards(self, rebuild: bool = False) -> None:
        e = self._current
        while len(self._cards) < len(e.neurons):
            self._cards.append(self._card())
        for i, (card, n) in enumerate(zip(self._cards, e.neurons)):
            card["rank"] = n.rank
            if rebuild:
                card["image"].value = _png(
                    plots.neuron_card_image(e, i, size=112, colorscale=self.colorscale)
                )
            resc = "" if n.rescored is None else f"<br>rescored {n.rescored:.3g}"
            card["text"].value = (
                f"<div class='flv-neuron'><b>#{n.rank}</b> · ch {n.channel} @({n.y},{n.x})<br>"
                f"score {n.score:.3g}<br>act {n.activation:.3g} · grad {n.gradient:.3g}{resc}</div>"
            )
        cards = [c["box"] for c in self._cards[: len(e.neurons)]]
        if e.class_map is not None:
            if rebuild:
                self.class_card["image"].value = _png(
                    plots.neuron_thumbnail(e.image, e.class_map, size=112, colorscale=self.colorscale)
                )
            cards.insert(0, self.class_card["box"])
        self.cards_box.children = cards

    def _toggle(self, rank: int, on: bool) -> None:
        enabled = set(self._want["enabled"] or [n.rank for n in self._current.neurons])
        enabled = enabled | {rank} if on else enabled - {rank}
        self._request(enabled=tuple(sorted(enabled)))

    def _sync_controls(self) -> None:
        """Make the controls show the applied state (after code set it, or after an error)."""
        e, h = self._current, self._have
        self._set_quiet(self.method_buttons, value=e.method)
        self._set_quiet(self.rank_grad_buttons, value=self.rank_grad)
        self._set_quiet(self.k_slider, value=len(e.neurons))
        if e.layer not in self.layer_dropdown.options:
            self._set_quiet(
                self.layer_dropdown, options=list(self.layer_dropdown.options) + [e.layer]
            )
        self._set_quiet(self.layer_dropdown, value=e.layer)
        self._set_quiet(self.threshold_slider, value=float(h["threshold"]))
        self._set_quiet(self.combine_dropdown, value=e.params["combine"])
        self._set_quiet(self.class_box, value=self._class_label(e, e.target))
        use_cam = e.params["combine"] in cam_rules()
        if use_cam:
            self._cam_rule = e.params["combine"]
        self.class_card["text"].value = (
            f"<div class='flv-neuron' title='Grad-CAM of {html.escape(str(e.layer))}, from the "
            f"ranking&#39;s gradient'><b>class map</b> · Grad-CAM<br>same pass, free<br>"
            f"combine '{self._cam_rule}'</div>"
        )
        self._set_quiet(self.class_card["check"], value=use_cam)
        self.class_card["box"].layout.border = "2px solid #e8850c" if use_cam else "2px solid #d5d9e0"
        on = set(self.enabled)
        for card, n in zip(self._cards, e.neurons):
            self._set_quiet(card["check"], value=n.rank in on)
            card["box"].layout.border = "2px solid #3b6fd4" if n.rank in on else "2px solid #d5d9e0"

    def _status(self, e: Explanation) -> None:
        last = self.stats["explain_s"][-1] if self.stats["explain_s"] else e.time_s
        light = self.stats.get("light_ms")
        tog = f" · last update {light[-1]:.0f} ms" if light else ""
        self.status.value = (
            f"<span class='flv-stat'>{html.escape(e.target_name)} ({e.target}) · layer <code>{html.escape(str(e.layer))}</code>"
            f" · box {tuple(e.box)} · explain {last * 1000:.0f} ms{tog}</span>"
        )

    # ------------------------------------------------------------------ export
    def _export_tip(self) -> str:
        return "write the current state as HTML + JSON (and PNG when kaleido and Chrome/Chromium are available)"

    def export(
        self, path: str | os.PathLike[str] | None = None, *, png: bool | None = None
    ) -> list[pathlib.Path]:
        """Save the current state: ``<stem>.html`` (self-contained report), ``<stem>.json``
        (the explanation's metadata, the enabled ranks and the controls' values) and, when
        ``png`` is true or ``None`` and kaleido can find a Chrome/Chromium, ``<stem>.png``.

        Args:
            path: the stem (``.html``/``.json``/``.png`` are appended; an existing suffix is
                dropped) or an existing directory; default: a timestamped name in
                ``export_dir`` or the current directory.
            png: ``True`` requires a PNG (raises if it cannot be made), ``False`` skips it.

        Returns:
            The files written.
        """
        e = self.explanation
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        default = f"fastloc_{e.target}_{e.method}_{stamp}"
        if path is None:
            stem = (self.export_dir or pathlib.Path.cwd()) / default
        else:
            p = pathlib.Path(path).expanduser()
            stem = p / default if p.is_dir() else p.with_suffix("")
        written = [
            write_report(
                stem.with_suffix(".html"),
                {e.method: e},
                title=f"fastloc_viz · {e.target_name} · neurons {', '.join(map(str, self.enabled))}",
            )
        ]
        state = {
            "explanation": e.to_dict(),
            "enabled": list(self.enabled),
            "k": self.k,
            "layer": self.layer,
            "method": self.method,
            "rank_grad": self.rank_grad,
            "threshold": self.threshold,
            "model": self.bundle.name,
        }
        written.append(
            write_text_atomic(stem.with_suffix(".json"), json.dumps(state, indent=2), what="export")
        )
        if png is not False:
            try:
                fig = go.Figure(self.overlay_fig)
                data = fig.to_image(format="png", scale=2)
            except Exception as err:  # kaleido missing, or no Chrome/Chromium for it
                if png:
                    raise RuntimeError(
                        "PNG export needs the kaleido package and a Chrome/Chromium it can find "
                        f"(pip install kaleido; apt-get install chromium): {err}"
                    ) from err
            else:
                tmp = stem.with_suffix(".png.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, stem.with_suffix(".png"))
                written.append(stem.with_suffix(".png"))
        return written

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


# ----------------------------------------------------------------------------- comparison
class MethodComparison(_Base):
    """All methods side by side on one colour scale, with per-method time and IoU.

    Shared controls: the class (top-5 first, then all, searchable) and the box threshold
    (re-boxes each method's map; no model call).

    Args:
        model_or_bundle: a :class:`~fastloc_viz.models.ModelBundle` or an ``nn.Module``.
        image: anything :func:`~fastloc_viz.explain` accepts.
        methods: names from :data:`fastloc_viz.METHODS`.
        gt_box: ``(x0, y0, x1, y1)`` ground truth on the model's input grid, or ``None``.
        explanations: method -> explanation already computed for ``image`` (same model and
            class): reused instead of computed again.
        **explain_kwargs: passed to every :func:`~fastloc_viz.explain` call.

    Programmatic access: :attr:`explanations` (method -> explanation), :attr:`target`,
    :attr:`threshold`, :attr:`gt_box`, :meth:`ious`.
    """

    def __init__(
        self,
        model_or_bundle: ModelBundle | Any,
        image: Any,
        methods: Sequence[str] | None = None,
        gt_box: Box | None = None,
        *,
        target: int | str | None = None,
        threshold: float = 0.3,
        debounce: float = 0.25,
        explanations: Mapping[str, Explanation] | None = None,
        **explain_kwargs: Any,
    ) -> None:
        super().__init__(model_or_bundle, image, debounce)
        methods = tuple(METHODS) if methods is None else tuple(methods)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"methods={methods!r}: each must be one of {list(METHODS)}")
        if gt_box is not None and len(tuple(gt_box)) != 4:
            raise ValueError(f"gt_box={gt_box!r} must be (x0, y0, x1, y1)")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(
                f"threshold={threshold!r} must be a fraction of the map's maximum in [0, 1]"
            )
        self.methods = methods
        self._gt = None if gt_box is None else tuple(int(v) for v in gt_box)
        self._kwargs = explain_kwargs
        self._threshold = float(threshold)
        self._want_t: int | None = None if target is None else self.bundle.class_index(target)
        self._base: dict[str, Explanation] = {}
        self._current: dict[str, Explanation] = {}
        self._seed = dict(explanations or {})
        if self._seed and target is None:
            self._want_t = next(iter(self._seed.values())).target
        with self._lock:
            self._compute(self._want_t)
        self._seed = {}
        self._build()
        self._render()

    @property
    def explanations(self) -> dict[str, Explanation]:
        """Method -> explanation on screen (boxes at the current threshold)."""
        return dict(self._current)

    @property
    def target(self) -> int:
        return next(iter(self._current.values())).target

    @target.setter
    def target(self, value: int | str | None) -> None:
        index = None if value is None else self.bundle.class_index(value)
        with self._lock:
            self._compute(index)
            self._want_t = self.target
            self._render()

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"threshold={value!r} must be a fraction of the map's maximum in [0, 1]"
            )
        with self._lock:
            self._threshold = float(value)
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
        n = len(self.methods)
        for i, m in enumerate(self.methods):
            if hasattr(self, "widget"):
                self._set_progress(i / n, f"{m} {i + 1}/{n}")
            seed = self._seed.get(m)
            if seed is not None and seed.target == target:
                out[m] = seed
                continue
            out[m] = explain(
                self.bundle,
                self.image,
                method=m,
                target=target,
                threshold=self._threshold,
                **self._kwargs,
            )
            self.stats["explain_calls"] += 1
        if hasattr(self, "widget"):
            self._set_progress(None)
        self._base = out
        self._rebox()

    def _rebox(self) -> None:
        self._current = {
            m: e.replace(
                box=map_to_box(e.saliency, self._threshold, e.params.get("components", "largest")),
                params={**e.params, "threshold": self._threshold},
            )
            for m, e in self._base.items()
        }

    def _want_target(self, index: int) -> None:
        self._want_t = index
        self._debouncer.poke()

    def _work(self) -> None:
        with self._lock:
            want = self._want_t
            if want == self.target:
                return
            try:
                self._compute(want)
            except Exception as err:  # noqa: BLE001 - shown in the widget
                self._want_t = self.target
                self._show_error(err, f"explaining class {want}")
                self._set_progress(None)
                self._set_quiet(self.class_box, value=self._class_label(self._first(), self.target))
                return
            self._set_progress(0.95, "drawing…")
            self._guarded(self._render, "drawing")
            self._set_progress(None)

    def _first(self) -> Explanation:
        return next(iter(self._current.values()))

    def _build(self) -> None:
        self.threshold_slider = W.FloatSlider(
            value=self._threshold,
            min=0.0,
            max=1.0,
            step=0.05,
            description="box threshold",
            readout_format=".2f",
            style={"description_width": "initial"},
            layout=W.Layout(width="300px"),
        )
        self.threshold_slider.observe(
            lambda c: (
                None
                if self._muted
                else self._guarded(
                    lambda: setattr(self, "threshold", float(c["new"])), "changing the threshold"
                )
            ),
            "value",
        )
        self.grid_fig = go.FigureWidget(plots.method_grid(self._current, gt_box=self._gt, cell=230))
        self.table = W.HTML()
        self.widget = W.VBox(
            [
                W.HTML(
                    _CSS
                    + f"<p class='flv-title'>MethodComparison · {html.escape(self.bundle.name)}</p>"
                ),
                W.HBox(
                    [self.class_box, self.threshold_slider], layout=W.Layout(flex_flow="row wrap")
                ),
                W.HBox([self.progress, self.status], layout=W.Layout(align_items="center")),
                self.error,
                self.grid_fig,
                self.table,
            ],
            layout=W.Layout(padding="6px"),
        )
        self.widget.add_class("fastloc-comparison")

    def _render(self) -> None:
        if not hasattr(self, "widget"):
            return
        e0 = self._first()
        _morph(self.grid_fig, plots.method_grid(self._current, gt_box=self._gt, cell=230))
        self._set_quiet(self.class_box, options=self._class_options(e0))
        self._set_quiet(self.class_box, value=self._class_label(e0, e0.target))
        self._set_quiet(self.threshold_slider, value=self._threshold)
        ious = self.ious()
        rows = "".join(
            f"<tr><td>{html.escape(plots.method_label(m))}</td><td style='text-align:right'>{e.time_s * 1000:.0f} ms</td>"
            f"<td style='text-align:right'>{tuple(e.box)}</td>"
            + (f"<td style='text-align:right'>{ious[m]:.2f}</td>" if ious else "")
            + "</tr>"
            for m, e in self._current.items()
        )
        self.table.value = (
            "<table class='flv-stat' style='border-collapse:collapse'><tr><th style='text-align:left'>method</th>"
            "<th>time</th><th>box</th>"
            + ("<th>IoU vs GT</th>" if ious else "")
            + "</tr>"
            + rows
            + "</table>"
        )
        self.status.value = (
            f"<span class='flv-stat'>class {html.escape(e0.target_name)} ({e0.target}) · "
            f"total {sum(e.time_s for e in self._current.values()) * 1000:.0f} ms</span>"
        )
