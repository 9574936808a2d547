"""The debouncing worker thread: the only threading in the widgets (no ipywidgets here).

Events from the controls only record what is wanted and :meth:`Debouncer.poke`; the worker
waits until the events stop for ``delay`` seconds, then calls ``work()``, which must bring
the widget to its *latest* wanted state. A burst of events therefore costs at most one
computation in flight plus one for the final state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("fastloc_viz")


class Debouncer:
    """Runs ``work()`` on a daemon thread once events stop for ``delay`` seconds.

    ``poke()`` is cheap and never blocks: it only records that work is wanted.
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
