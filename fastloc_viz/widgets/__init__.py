"""Jupyter widgets: :class:`NeuronExplorer` and :class:`MethodComparison`.

Standard ipywidgets and plotly ``FigureWidget`` only (no frontend extension to install), so
they work in JupyterLab 4, Notebook 7 and VS Code. Display a widget by leaving it as the
last expression of a cell.

How they stay responsive:

* **Cheap changes run at once.** Toggling a neuron, moving the box threshold or changing the
  combination rule recomputes the map and the box from the cached neuron maps
  (:func:`fastloc_viz.methods.combine.recombine`): no forward or backward pass.
* **Expensive changes are debounced on a worker thread.** A new class, ``k``, layer,
  ``rank_grad`` or method needs a new :func:`fastloc_viz.explain` call. Events from the
  controls only record the wanted state; a worker thread waits until the events stop for
  ``debounce`` seconds, then brings the widget to the *latest* wanted state. A burst of
  slider events therefore costs at most one computation in flight plus one for the final
  state, never one per event. Progress shows while it works.
* **Errors are shown, not swallowed.** An exception raised by a control's callback appears
  in the widget's error box (type, message, and the traceback folded), the controls return
  to the last good state, and the widget keeps working. Text in the class box that names no
  class, or several, gets a message beside the box and changes nothing.
* **Programmatic access** (``explorer.target = "tiger cat"``, ``explorer.k = 3``,
  ``explorer.enabled = (1, 2)``) runs synchronously in the caller's thread and raises on
  bad values, for scripts and tests.

Modules: :mod:`.state` (what is wanted and shown, the cache, what a change costs; pure),
:mod:`.worker` (the debouncing thread), :mod:`.base` (what both widgets share: progress,
errors, the class box), :mod:`.controls` (the explorer's controls from one table),
:mod:`.cards`, :mod:`.effects` (the neurons' drops, computed lazily on the worker),
:mod:`.charts`, :mod:`.export`, :mod:`.explorer`, :mod:`.comparison`.
The widgets call this package's ``explain`` and ``recombine`` (tests may patch them).
"""

from __future__ import annotations

# the widgets call these through the package (so tests can patch them);
# probe_layer_options is the explorer's layer list (docs/own-model.md)
from ..methods.combine import recombine  # noqa: F401
from ..methods.explain import explain  # noqa: F401
from ..model.layers import probe_layer_options  # noqa: F401
from .comparison import MethodComparison
from .explorer import NeuronExplorer
from .review import BoxReview

__all__ = ["NeuronExplorer", "MethodComparison", "BoxReview"]
