"""The guided-backpropagation rule, applied to every ReLU-family call of a forward pass.

Guided backprop passes a gradient through a ReLU only where the forward input was positive
*and* the incoming gradient is positive. Hooking ``nn.ReLU`` modules (as Captum does) misses
``nn.ReLU6``, ``F.relu`` called in ``forward`` and reused modules, and module backward hooks
break on ``inplace=True``. Instead, :class:`GuidedMode` is a ``TorchFunctionMode``: while it
is active, every call of ``relu``, ``relu_``, ``relu6`` and ``hardtanh(min_val=0)`` -- from a
module or from functional code, in place or not -- is replaced by the same clamp with the
guided backward. The model itself is never touched.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, lo, hi)`` forward; backward ``max(grad, 0)`` where ``lo < x < hi``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float | None, save_input: bool = False) -> torch.Tensor:
        out = x.clamp(min=lo, max=hi)
        # No mask: the pass-through set ``lo < x < hi`` is recovered in backward by autograd's
        # own relu / hardtanh backward kernels from the output (``lo < out < hi`` exactly
        # there), or from the input where the output may be modified in place later (a
        # non-inplace hardtanh, whose native backward also keeps the input). A bool mask cost
        # three kernels in forward and a bool->float copy in every backward pass.
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x if save_input else out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ref,) = ctx.saved_tensors
        if ctx.hi is None:
            g = torch.ops.aten.threshold_backward(grad, ref, ctx.lo)
        else:
            g = torch.ops.aten.hardtanh_backward(grad, ref, ctx.lo, ctx.hi)
        return g.relu_(), None, None, None  # relu_, not clamp_: it has a vmap batching rule


def guided_clamp(
    x: torch.Tensor, lo: float = 0.0, hi: float | None = None, save_input: bool = False
) -> torch.Tensor:
    """ReLU (``hi=None``) or ReLU6-style clamp with the guided backward rule.

    ``save_input`` keeps ``x`` rather than the output for backward (as autograd's hardtanh
    does): use it when the caller may modify the output in place.
    """
    return _GuidedClamp.apply(x, lo, hi, save_input)


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default):
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


# func -> (lo, hi, position of the inplace flag or True for always-inplace variants)
_RELU_FUNCS: dict = {
    F.relu: (0.0, None, 1),
    torch.relu: (0.0, None, None),
    torch.Tensor.relu: (0.0, None, None),
    torch.relu_: (0.0, None, True),
    torch.Tensor.relu_: (0.0, None, True),
    F.relu_: (0.0, None, True),
    F.relu6: (0.0, 6.0, 1),
}
if hasattr(torch._C._nn, "relu6"):
    _RELU_FUNCS[torch._C._nn.relu6] = (0.0, 6.0, None)

_UNTREATED = {
    F.silu: "silu",
    F.gelu: "gelu",
    F.hardswish: "hardswish",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    F.selu: "selu",
    F.celu: "celu",
    F.mish: "mish",
    F.softplus: "softplus",
    F.prelu: "prelu",
    F.rrelu: "rrelu",
}
_TREATED_MODULES = (nn.ReLU, nn.ReLU6)


class GuidedMode(TorchFunctionMode):
    """Context manager: ReLU-family calls made while ``guided`` is true get the guided rule.

    ``guided`` can be switched mid-forward (the fastloc layer hook switches it off above the
    probe layer for ``rank_grad="plain"``). Activations the rule cannot treat (SiLU, GELU, ...)
    are collected in ``untreated`` while ``guided`` is true.
    """

    def __init__(self, guided: bool = True) -> None:
        super().__init__()
        self.guided = guided
        self.treated = 0
        self.untreated: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.guided:
            spec = _RELU_FUNCS.get(func)
            if spec is None and func is F.hardtanh:
                lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
                if lo == 0.0:
                    spec = (0.0, float(_arg(args, kwargs, 2, "max_val", 1.0)), 3)
            if spec is not None:
                return self._guided(spec, args, kwargs)
            name = _UNTREATED.get(func)
            if name is not None:
                self.untreated.add(name)
        return func(*args, **kwargs)

    def _guided(self, spec, args, kwargs):
        lo, hi, inplace_at = spec
        x = args[0]
        inplace = inplace_at is True or (
            inplace_at is not None and bool(_arg(args, kwargs, inplace_at, "inplace", False))
        )
        self.treated += 1
        out = guided_clamp(x, lo, hi, save_input=hi is not None and not inplace)
        if not inplace:
            return out
        # Keep in-place semantics (callers may ignore the return value): write the result
        # into x, so x's history becomes a copy of the guided output.
        x.copy_(out)
        return x


def untreated_activation_modules(model: nn.Module) -> set[str]:
    """Class names of custom activation modules (outside ``torch.nn``, e.g. a memory-efficient
    Swish written as an autograd Function) that no functional call would reveal."""
    words = ("swish", "silu", "gelu", "mish")
    return {
        type(m).__name__
        for m in model.modules()
        if not type(m).__module__.startswith("torch.nn")
        and any(w in type(m).__name__.lower() for w in words)
    }


def has_relu_family(model: nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.ReLU`` / ``nn.ReLU6`` module (functional calls aside)."""
    return any(isinstance(m, _TREATED_MODULES) for m in model.modules())


def warn_untreated(names: set[str], treated: int) -> None:
    """Warn (once per distinct message) about activations left with plain gradients: one
    warning, naming the untreated activations, whether or not any ReLU call was treated."""
    untreated = f"; its activation(s) {sorted(names)} pass gradients unchanged" if names else ""
    if treated == 0:
        warnings.warn(
            "the model made no ReLU-family call (relu, relu6, hardtanh(0, x)) in its forward "
            f"pass{untreated}: guided backprop equals the plain gradient for this model.",
            UserWarning,
            stacklevel=4,
        )
    elif names:
        warnings.warn(
            f"guided backprop cannot treat the activation(s) {sorted(names)}: gradients pass "
            "through them unchanged (plain gradient), so the map is only guided at the "
            f"{treated} ReLU/ReLU6 call(s) of the forward pass.",
            UserWarning,
            stacklevel=4,
        )
