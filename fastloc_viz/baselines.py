"""The baselines, computed by Captum: Grad-CAM, guided backprop, guided Grad-CAM.

The only module that imports captum. Captum's own ``GuidedBackprop`` hooks ``nn.ReLU``
modules only, so on a ReLU6 model (MobileNet, EfficientNet-Lite) it silently returns the
plain gradient, and its module backward hooks break on ``ReLU(inplace=True)``. Here Captum's
``Saliency`` computes the input gradient while :class:`GuidedMode` applies the guided rule to
every ReLU-family call, which is exact on all of those models (and equal to Captum's
``GuidedBackprop`` where that one is right).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import nn

from .guided import GuidedMode
from .hooks import require_called, require_spatial


def _forward(model: nn.Module, as_logits: Callable | None) -> Callable:
    return (lambda inp: as_logits(model(inp))) if as_logits else model


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    targets: torch.Tensor,
    as_logits=None,
    name: str | None = None,
) -> torch.Tensor:
    """Grad-CAM at ``layer`` (ReLU on), bilinearly upsampled to the input: ``N x 1 x H x W``.

    Raises:
        ValueError: ``layer`` (called ``name`` in messages) has no spatial map.
    """
    try:
        cam = LayerGradCam(_forward(model, as_logits), layer).attribute(
            x, target=targets, relu_attributions=True
        )
    except AssertionError as e:  # Captum asserts when the layer's hook never fired
        if "did not obtain any outputs" not in str(e):
            raise
        require_called(name or type(layer).__name__, 0)
    require_spatial(name or type(layer).__name__, cam, "gives a Grad-CAM of shape")
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear").detach()


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
