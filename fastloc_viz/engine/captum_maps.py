"""The baselines, computed by Captum: Grad-CAM, guided backprop, guided Grad-CAM.

The only module that imports captum. Captum's own ``GuidedBackprop`` hooks ``nn.ReLU``
modules only, so on a ReLU6 model (MobileNet, EfficientNet-Lite) it silently returns the
plain gradient, and its module backward hooks break on ``ReLU(inplace=True)``. Here Captum's
``Saliency`` computes the input gradient while :class:`GuidedMode` applies the guided rule to
every ReLU-family call, which is exact on all of those models (and equal to Captum's
``GuidedBackprop`` where that one is right). Grad-CAM of a ViT block's tokens is computed
here, on the patch grid, by the same rule (Captum's ``LayerGradCam`` cannot reshape tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import nn

from ..model.state import forward_hook, require_called, require_spatial
from ..model.tokens import as_map, require_reach
from .guided import GuidedMode


def _forward(model: nn.Module, as_logits: Callable | None) -> Callable:
    return (lambda inp: as_logits(model(inp))) if as_logits else model


class _Tokens(Exception):
    """Raised by the probe hook when the layer outputs tokens: Captum's forward stops there."""


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    targets: torch.Tensor,
    as_logits=None,
    name: str | None = None,
) -> torch.Tensor:
    """Grad-CAM at ``layer`` (ReLU on), bilinearly upsampled to the input: ``N x 1 x H x W``.

    A layer with ``N x T x C`` tokens (a ViT block) is read on its patch grid
    (:mod:`fastloc_viz.model.tokens`), which Captum's ``LayerGradCam`` cannot do: there Grad-CAM is
    computed here, by the same rule (channel weights: the grid's mean gradient).

    Raises:
        ValueError: ``layer`` (called ``name`` in messages) has no spatial map.
    """
    name = name or type(layer).__name__

    def tokens(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 3:
            raise _Tokens

    try:
        with forward_hook(layer, tokens):
            cam = LayerGradCam(_forward(model, as_logits), layer).attribute(
                x, target=targets, relu_attributions=True
            )
    except _Tokens:
        return token_gradcam(model, x, layer, targets, as_logits, name)
    except AssertionError as e:  # Captum asserts when the layer's hook never fired
        if "did not obtain any outputs" not in str(e):
            raise
        require_called(name, 0)
    require_spatial(name, cam, "gives a Grad-CAM of shape")
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear").detach()


def token_gradcam(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, targets: torch.Tensor, as_logits=None, name: str = "layer"
) -> torch.Tensor:
    """Grad-CAM of a token layer on its patch grid: ``N x 1 x H x W`` (see :func:`gradcam`)."""
    seen: dict = {"calls": 0}

    def hook(_m, _inp, out):
        seen["calls"] += 1
        if seen["calls"] == 1:
            seen["out"] = out
            return out.clone() if isinstance(out, torch.Tensor) else None
        return None

    x = x.detach().requires_grad_(True)  # a graph to the layer even when the weights are frozen
    with forward_hook(layer, hook):
        logits = _forward(model, as_logits)(x)
    require_called(name, seen["calls"])
    acts, grid = as_map(model, name, seen["out"], tuple(x.shape[-2:]))
    require_spatial(name, acts)
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), seen["out"])
    if grid is not None:
        grad = require_reach(name, grad, grid)
    cam = (grad.mean(dim=(2, 3), keepdim=True) * acts.detach()).sum(dim=1, keepdim=True).clamp(min=0)
    return F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False).detach()


def guided_backprop(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, as_logits=None
) -> tuple[torch.Tensor, GuidedMode]:
    """Guided-backprop gradient of the target logits w.r.t. ``x``: ``N x 3 x H x W``.

    Returns the attribution and the :class:`GuidedMode` (which activations it treated).
    """
    mode = GuidedMode()
    with mode:
        attr = Saliency(_forward(model, as_logits)).attribute(
            x.detach().requires_grad_(True), target=targets, abs=False
        )
    return attr.detach(), mode


def guided_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    targets: torch.Tensor,
    as_logits=None,
    name: str | None = None,
) -> tuple[torch.Tensor, GuidedMode]:
    """Guided Grad-CAM: guided backprop times the upsampled Grad-CAM, ``N x 3 x H x W``."""
    cam = gradcam(model, x, layer, targets, as_logits, name)
    gbp, mode = guided_backprop(model, x, targets, as_logits)
    return gbp * cam, mode
