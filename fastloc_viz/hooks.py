"""The only module that touches a user's model: hooks and state, all undone on exit.

Everything here is a context manager that restores the model in ``finally``, also when the
body raises (a bad target, a layer that fails, ``KeyboardInterrupt``).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger("fastloc_viz")

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


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
    under ``torch.no_grad()`` or ``torch.inference_mode()``.
    """
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


def spatial_layer_names(model: nn.Module) -> list[str]:
    """Names of the conv / block-like submodules (candidates for a probe layer)."""
    return [
        n
        for n, m in model.named_modules()
        if n and (isinstance(m, (nn.Conv2d, nn.ReLU, nn.ReLU6)) or len(list(m.children())) > 0)
    ]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a layer by dotted name or by module object; returns ``(name, module)``.

    Raises:
        LookupError: no such submodule (the message lists the closest names).
        TypeError: ``layer`` is neither a string nor a module.
    """
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                return name, m
        raise LookupError(
            f"layer {type(layer).__name__} is not a submodule of the model; pass one of its "
            f"modules or a dotted name such as {spatial_layer_names(model)[-3:]}"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return layer, modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = close or spatial_layer_names(model)[-8:]
    raise LookupError(f"layer {layer!r} does not exist in the model; candidates: {hint}")


def default_layer(model: nn.Module, x: torch.Tensor, stride: int = 32) -> str:
    """Pick a probe layer by a dry forward: among the shallowest modules whose output is the
    stride-``stride`` feature map (``h == ceil(H / stride)``) and that run once per forward,
    the last to finish (a whole block, e.g. ResNet's ``layer3``, VGG's ``features.29``).

    Falls back to the last spatial (4-D, h > 1) output. ``x`` is one normalized input batch.
    """
    outputs: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def make_hook(name: str):
        def hook(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                outputs.append((name, tuple(out.shape)))

        return hook

    # Pooling layers only repeat the map before them.
    modules = {n: m for n, m in model.named_modules() if n and "Pool" not in type(m).__name__}
    with preserved(model), forward_hooks(modules, make_hook), torch.no_grad():
        model(x)
    height, width = x.shape[-2:]
    want = (-(-height // stride), -(-width // stride))
    once = [(n, s) for n, s in outputs if calls[n] == 1]
    pick = [n for n, s in once if s[-2:] == want] or [n for n, s in once if s[-1] > 1 and s[-2] > 1]
    if pick:  # the shallowest such modules (whole blocks, not a conv inside the next stage)
        depth = min(n.count(".") for n in pick)
        pick = [n for n in pick if n.count(".") == depth]
    else:
        raise ValueError(
            "the model has no module with a spatial (N x C x h x w) output to probe; "
            "pass layer= explicitly"
        )
    log.info("fastloc_viz: probe layer %r picked by a dry run (stride-%d map)", pick[-1], stride)
    return pick[-1]


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


def probe_layer_options(model: nn.Module, current: str | None = None) -> list[str]:
    """Probe-layer names worth offering in a menu: the blocks of the model's top-level
    ``Sequential`` / ``ModuleList`` containers and its top-level convolutions, in forward
    order, plus ``current``."""
    names: list[str] = []
    for name, mod in model.named_modules():
        if not name:
            continue
        parent_name, _, _ = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if parent_name.count(".") <= 1 and isinstance(parent, (nn.Sequential, nn.ModuleList)) and parent is not model:
            names.append(name)
        elif not parent_name and isinstance(mod, nn.Conv2d):
            names.append(name)
    if current and current not in names:
        names.append(current)
    return names
