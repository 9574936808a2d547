"""What both widgets share: bundle and image, progress, the error box, quiet setting of
controls, the debounced worker, and the class box (what people type, looked up by
:func:`fastloc_viz.model.classes.class_index`)."""

from __future__ import annotations

import contextlib
import html
import math
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as W

from ..core.results import Explanation
from ..model.bundle import ModelBundle, bundle_of
from ..model.classes import AmbiguousClass, UnknownClass, class_index
from .worker import Debouncer

CSS = """
<style>
.flv-card { border-radius: 8px; }
.flv-title { font-size: 15px; font-weight: 600; margin: 0; }
.flv-muted { color: #5b6578; font-size: 12px; }
.flv-err { background:#fff1f0; border:1px solid #f3b7b3; color:#8a1c13; padding:6px 10px;
           border-radius:6px; font-size:13px; }
.flv-err pre { white-space: pre-wrap; font-size: 11px; max-height: 180px; overflow:auto; }
.flv-note { background:#fffbe6; border:1px solid #f0d98c; color:#5c4a00; padding:3px 8px;
            border-radius:6px; font-size:12.5px; }
.flv-stat { font-size: 12px; color:#5b6578; }
.flv-neuron { font-size: 11.5px; line-height: 1.35; font-variant-numeric: tabular-nums; }
</style>
"""


def close_tree(widget: W.Widget) -> None:
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()


def error_html(err: BaseException, context: str) -> str:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return (
        f"<div class='flv-err'><b>{html.escape(type(err).__name__)}</b> while {html.escape(context)}: "
        f"{html.escape(str(err))}<details><summary>traceback</summary><pre>{html.escape(tb)}</pre>"
        "</details><span class='flv-muted'>The widget kept its last good state; keep going.</span></div>"
    )


def _top_label(expl: Explanation, p) -> str:
    """A top class's menu label: ``"★ tabby (281)"``, or ``"★ Effusion · 87% (3)"`` for a
    label found by its sigmoid."""
    if expl.output == "sigmoid":
        return f"★ {p.name} · {p.probability:.0%} ({p.index})"
    return f"★ {p.name} ({p.index})"


class WidgetBase:
    """Shared plumbing of :class:`NeuronExplorer` and :class:`MethodComparison`.

    Subclasses implement ``_want_target(index)`` (a class was chosen) and ``_work()`` (the
    worker's job: bring the widget to the latest wanted state).
    """

    def __init__(self, model_or_bundle: ModelBundle | Any, image: Any, debounce: float) -> None:
        from ..imaging.batch import is_batch

        if is_batch(image):
            raise ValueError(
                f"the widgets explain one image, got a batch ({type(image).__name__} of "
                f"{len(image)}); pass one of them, or use fastloc_viz.explain for batches"
            )
        self.bundle: ModelBundle = bundle_of(model_or_bundle)
        self.image = image
        self._lock = threading.RLock()  # one change of this widget at a time (passes: the model's lock)
        self._muted = 0  # > 0 while controls are set by code (their observers must not fire)
        self._cancel = threading.Event()  # set by close(): the background work stops
        self._debouncer = Debouncer(self._work, debounce, self._cancel)
        self.stats: dict[str, Any] = {
            "explain_calls": 0,
            "recombine_calls": 0,
            "errors": 0,
            "explain_s": [],
            "update_ms": [],
        }
        names = self.bundle.target_names  # a single-logit model's "not <name>" too
        self._class_labels = [f"{n} ({i})" for i, n in enumerate(names)]
        self._options: list[str] = list(self._class_labels)  # the full list, the top first
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
        # ensure_option=False and continuous_update=False: the text arrives on Enter or
        # blur, whatever it is, and class_index() makes sense of it
        self.class_box = W.Combobox(
            placeholder="type a class name or index…",
            ensure_option=False,
            continuous_update=False,
            description="class",
            layout=W.Layout(width="360px", margin="0 12px 0 0"),
            style={"description_width": "42px"},
        )
        self.class_message = W.HTML(layout=W.Layout(display="none"))
        self.class_box.observe(self._on_class, names="value")

    # ------------------------------------------------------------------ class box
    def _class_options(self, expl: Explanation) -> list[str]:
        """The top first (★; with sigmoid outputs, the labels found, with their probabilities),
        then every other class."""
        top = [_top_label(expl, p) for p in expl.top5]
        top_idx = {p.index for p in expl.top5}
        return top + [lab for i, lab in enumerate(self._class_labels) if i not in top_idx]

    def _class_label(self, expl: Explanation, index: int) -> str:
        p = next((p for p in expl.top5 if p.index == index), None)
        return self._class_labels[index] if p is None else _top_label(expl, p)

    def _show_class_options(self, expl: Explanation) -> None:
        self._options = self._class_options(expl)
        self._set_quiet(self.class_box, options=self._options)

    def _on_class(self, change: dict) -> None:
        if self._muted or not str(change["new"]).strip():
            return
        self._guarded(lambda: self._class_typed(str(change["new"])), "choosing a class")

    def _class_typed(self, text: str) -> None:
        """Text from the class box: a class chosen, or a message and no change."""
        names = self.bundle.target_names
        try:
            index = class_index(names, text)
        except AmbiguousClass as err:
            labels = [lab for lab in self._options if self._label_index(lab) in set(err.candidates)]
            listed = ", ".join(html.escape(f"{names[i]} ({i})") for i in err.candidates[:12])
            more = f" and {len(err.candidates) - 12} more" if len(err.candidates) > 12 else ""
            self._note(
                f"<b>{html.escape(text)}</b> matches {len(err.candidates)} classes: {listed}{more}. "
                "Pick one from the list."
            )
            self._set_quiet(self.class_box, options=labels)  # the box offers just those
            return
        except UnknownClass as err:
            close = ", ".join(html.escape(names[i]) for i in err.suggestions)
            hint = f" Closest: {close}." if close else " Type part of a class name, or its index."
            self._note(f"No class matches <b>{html.escape(text)}</b>.{hint} The explanation is unchanged.")
            self._set_quiet(self.class_box, options=self._options)
            return
        self._note(None)
        if list(self.class_box.options) != self._options:
            self._set_quiet(self.class_box, options=self._options)
        self._want_target(index)

    @staticmethod
    def _label_index(label: str) -> int:
        return int(label.rsplit("(", 1)[1].rstrip(")"))

    def _note(self, message: str | None) -> None:
        """Show (or hide, with ``None``) the message beside the class box."""
        if message is None:
            if self.class_message.layout.display != "none":
                self.class_message.layout.display = "none"
                self.class_message.value = ""
            return
        self.class_message.value = f"<div class='flv-note'>{message}</div>"
        self.class_message.layout.display = "block"

    def _want_target(self, index: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ------------------------------------------------------------------ progress, errors
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
                self._set_progress(0.1 + 0.8 * (1 - math.exp(-elapsed / expected)), f"{text} {elapsed:.1f} s")

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
        self.error.value = error_html(err, context)
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
        """Set a control's values without running its observers."""
        self._muted += 1
        try:
            for key, value in values.items():
                if getattr(widget, key) != value:
                    setattr(widget, key, value)
        finally:
            self._muted -= 1

    # ------------------------------------------------------------------ lifetime
    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until pending UI-triggered work is done (for scripts and tests)."""
        return self._debouncer.wait(timeout)

    def _work(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Remove the widget from the page and cancel its background work: pending work is
        dropped, work in flight ends at its next pass (or its wait for the model)."""
        self._debouncer.stop()
        if hasattr(self, "widget"):
            close_tree(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:  # older IPython/VS Code
        from IPython.display import display

        display(self.widget)
