"""The only place that touches a user's model: hooks and state, all undone on exit, and
one pass at a time.

Everything here is a context manager that restores the model in ``finally``, also when the
body raises (a bad target, a layer that fails, ``KeyboardInterrupt``).

**One pass at a time.** Forward hooks, ``inplace`` flags and ``requires_grad`` belong to the
model, not to a thread: two passes at once on one model see each other's hooks (a widget's
ablation mask multiplied into an ``explain`` call, a probe layer "called twice"). So every
pass runs inside :func:`one_pass`, a re-entrant lock per model (``preserved`` takes it):
``explain``, ``ablate``, the atlas, the faithfulness and sanity checks, and the widgets'
background work all wait their turn. A thread that runs background work marks it with
:func:`cancel_with`; once that event is set, the thread's next pass (or its wait for one)
raises :class:`Cancelled` instead of running.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class Cancelled(BaseException):
    """The work that asked for a pass was cancelled (its widget closed, or the interpreter is
    exiting). A ``BaseException``, like ``KeyboardInterrupt``: no error to show, it ends the
    work."""


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_CANCEL = threading.local()
_POLL_S = 0.05


def model_lock(model: nn.Module) -> threading.RLock:
    """The model's one lock (made on first use, dropped with the model)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def cancel_with(event: threading.Event) -> Iterator[None]:
    """Passes this thread starts in the body raise :class:`Cancelled` once ``event`` is set."""
    old = getattr(_CANCEL, "event", None)
    _CANCEL.event = event
    try:
        yield
    finally:
        _CANCEL.event = old


@contextmanager
def one_pass(model: nn.Module) -> Iterator[None]:
    """Hold ``model``'s lock for the body: one pass at a time on a model, whichever thread
    asks; the others wait their turn. Re-entrant within a thread. Under :func:`cancel_with`,
    a cancelled wait (or a pass started after the cancel) raises :class:`Cancelled`."""
    lock = model_lock(model)
    event = getattr(_CANCEL, "event", None)
    if event is None:
        lock.acquire()
    else:
        while not lock.acquire(timeout=_POLL_S):
            if event.is_set():
                raise Cancelled("cancelled while waiting for the model")
        if event.is_set():
            lock.release()
            raise Cancelled("cancelled before the pass")
    try:
        yield
    finally:
        lock.release()


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of hooks of each kind registered on ``model`` and its submodules."""
    counts = dict.fromkeys(_HOOK_DICTS, 0)
    for m in model.modules():
        for attr in _HOOK_DICTS:
            counts[attr] += len(getattr(m, attr, {}) or {})
    return counts


@contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body with ``model`` in eval mode and grad enabled; restore it all afterwards.

    Restored: every module's ``training`` flag, every ``inplace`` flag, each parameter's
    ``requires_grad`` and ``.grad`` (the same tensor object). Grad is enabled inside even
    under ``torch.no_grad()`` or ``torch.inference_mode()``. The body holds the model's
    lock (:func:`one_pass`): one pass at a time on a model.
    """
    with one_pass(model):
        training = [(m, m.training) for m in model.modules()]
        inplace = [(m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]
        params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        try:
            model.eval()
            with torch.inference_mode(False), torch.enable_grad():
                yield model
        finally:
            for m, flag in training:
                m.training = flag
            for m, flag in inplace:
                m.inplace = flag
            for p, req, grad in params:
                if p.requires_grad != req:
                    p.requires_grad_(req)
                if p.grad is not grad:
                    p.grad = grad


@contextmanager
def forward_hook(module: nn.Module, hook: Callable) -> Iterator[None]:
    """Register ``hook`` as a forward hook of ``module`` for the body only."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def forward_hooks(modules: dict[str, nn.Module], make_hook: Callable[[str], Callable]) -> Iterator[None]:
    """Register ``make_hook(name)`` on each module for the body only."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def require_called(name: str, calls: int) -> None:
    """A probe layer must run exactly once per forward pass."""
    if calls == 0:
        raise ValueError(f"layer {name!r} was not called in the model's forward pass; pick a layer that runs")
    if calls > 1:
        raise ValueError(
            f"layer {name!r} runs {calls} times per forward pass (a reused module); "
            "pick a module that runs once, such as the block containing it"
        )


def require_spatial(name: str, out, what: str = "outputs") -> None:
    """``out`` must be an ``N x C x h x w`` map with more than one cell."""
    if not (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"layer {name!r} {what} {shape}, not an N x C x h x w map: it has no spatial map to probe "
            "(after global pooling or a fully connected layer); pick a conv layer or block"
        )
