"""The widgets' background threads: the debouncer, one-off jobs, and their end (no ipywidgets
here).

Events from the controls only record what is wanted and :meth:`Debouncer.poke`; the worker
waits until the events stop for ``delay`` seconds, then calls ``work()``, which must bring
the widget to its *latest* wanted state. A burst of events therefore costs at most one
computation in flight plus one for the final state.

Every background thread starts through :func:`spawn` with its widget's cancel event: its
passes go through the model's lock like any other (:func:`fastloc_viz.model.state.one_pass`),
and once the event is set (the widget closed) its next pass, or its wait for one, raises
``Cancelled`` and the thread ends. At interpreter exit every such thread is cancelled and
joined before Python finalizes, so a script that leaves a widget alive exits normally (a
daemon thread inside torch at finalization aborts the process).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

from ..model.state import Cancelled, cancel_with

log = logging.getLogger("fastloc_viz")

EXIT_WAIT_S = 120.0
"""At exit, how long to wait for the passes in flight (each ends at its pass's end)."""

_ALIVE: dict[threading.Thread, Callable[[], None]] = {}  # thread -> how to stop it
_ALIVE_LOCK = threading.Lock()


def spawn(fn: Callable[[], None], name: str, cancel: threading.Event, stop: Callable[[], None] | None = None) -> threading.Thread:
    """Run ``fn()`` on a daemon thread whose passes stop once ``cancel`` is set; at exit the
    thread is stopped (``stop()``, else ``cancel.set()``) and joined."""

    def run() -> None:
        try:
            with cancel_with(cancel):
                fn()
        except Cancelled:
            pass
        finally:
            with _ALIVE_LOCK:
                _ALIVE.pop(threading.current_thread(), None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _ALIVE_LOCK:
        _ALIVE[thread] = stop or cancel.set
    thread.start()
    return thread


def stop_all(timeout: float = EXIT_WAIT_S) -> bool:
    """Cancel every background thread and wait for them (at most ``timeout`` s in all);
    ``False`` if some are still running. Registered with :mod:`atexit`."""
    with _ALIVE_LOCK:
        alive = dict(_ALIVE)
    for stop in alive.values():
        stop()
    deadline = time.monotonic() + timeout
    for thread in alive:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in alive if t.is_alive()]
    if left:
        log.warning("fastloc_viz: background work still running at exit: %s", left)
    return not left


atexit.register(stop_all)


class Debouncer:
    """Runs ``work()`` on a daemon thread once events stop for ``delay`` seconds.

    ``poke()`` is cheap and never blocks: it only records that work is wanted. ``stop()``
    sets ``cancel`` (the widget's cancel event, by default one of its own): pending work is
    dropped, and work in flight ends at its next pass.
    """

    def __init__(self, work: Callable[[], None], delay: float, cancel: threading.Event | None = None) -> None:
        self._work = work
        self.delay = delay
        self.cancel = cancel if cancel is not None else threading.Event()
        self._last = 0.0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = False
        self._lock = threading.Lock()
        self._thread = spawn(self._loop, "fastloc-viz-widget", self.cancel, self.stop)

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set()

    def poke(self) -> None:
        if self.stopped:  # closed: no more work
            return
        with self._lock:
            self._last = time.monotonic()
            self._pending = True
            self._idle.clear()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no work is pending or running; ``False`` on timeout."""
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """Cancel: no more work; work in flight ends at its next pass."""
        self.cancel.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread to end (after :meth:`stop`); ``False`` on timeout."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while self._settled():
                with self._lock:
                    self._pending = False
                try:
                    self._work()
                except Exception:  # work() reports its own errors; never kill the thread
                    log.exception("fastloc_viz widget worker")
                with self._lock:
                    if not self._pending:
                        self._idle.set()
        finally:
            self._idle.set()

    def _settled(self) -> bool:
        """Wait for a poke, then for the burst to settle; ``False`` once stopped."""
        self._wake.wait()
        self._wake.clear()
        while not self.stopped:  # let the burst settle (stop() interrupts the wait)
            with self._lock:
                remaining = self._last + self.delay - time.monotonic()
            if remaining <= 0:
                return True
            if self._wake.wait(remaining):
                self._wake.clear()
        return False
