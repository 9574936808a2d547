"""The maps Captum computes: Grad-CAM, guided backprop, guided Grad-CAM, and the pixel
attributions saliency, integrated gradients, SmoothGrad (``NoiseTunnel``) and occlusion.

The only module that imports captum. Captum's own ``GuidedBackprop`` hooks ``nn.ReLU``
modules only, so on a ReLU6 model (MobileNet, EfficientNet-Lite) it silently returns the
plain gradient, and its module backward hooks break on ``ReLU(inplace=True)``. Here Captum's
``Saliency`` computes the input gradient while :class:`GuidedMode` applies the guided rule to
every ReLU-family call, which is exact on all of those models (and equal to Captum's
``GuidedBackprop`` where that one is right). Grad-CAM of a ViT block's tokens is computed
on the patch grid by :mod:`.cams`, by the same rule (Captum's ``LayerGradCam`` cannot reshape
tokens). The pixel attributions take ``batch_size``: how many inputs (interpolation steps,
noisy samples, occluded copies) go through the model in one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from torch import nn

from ..model.state import forward_hook, require_called, require_spatial
from . import cams
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
    return cams.upsample(cams.gradient_cam(model, x, layer, targets, "gradcam", as_logits, name), tuple(x.shape[-2:]))


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


def saliency(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, as_logits=None) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): ``|d logit / d x|``, ``N x 3 x H x W``, Captum's ``Saliency``."""
    return Saliency(_forward(model, as_logits)).attribute(
        x.detach().requires_grad_(True), target=targets, abs=True
    ).detach()


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor | float, steps: int,
    as_logits=None, batch_size: int = 8,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from ``baseline`` to ``x`` in ``steps``
    (Captum's Gauss-Legendre rule), ``batch_size`` inputs per pass: ``N x 3 x H x W``, signed."""
    return IntegratedGradients(_forward(model, as_logits)).attribute(
        x.detach(), baselines=baseline, target=targets, n_steps=steps, internal_batch_size=max(batch_size, len(x))
    ).detach()


def smoothgrad(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, samples: int, stdev: float, as_logits=None,
    batch_size: int = 8, seed: int = 0,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean ``|gradient|`` over ``samples`` noisy copies
    of ``x`` (Gaussian, standard deviation ``stdev`` in the model's input space), Captum's
    ``NoiseTunnel(Saliency)``; about ``batch_size`` noisy copies per pass. Each image's noise is
    drawn from ``seed`` on a forked RNG (the caller's random state is left as it was), so an
    image's map does not depend on the other images of its batch: ``N x 3 x H x W``."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    tunnel = NoiseTunnel(Saliency(_forward(model, as_logits)))
    out = []
    for i in range(len(x)):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out.append(tunnel.attribute(
                x[i:i + 1].detach().requires_grad_(True), nt_type="smoothgrad", nt_samples=samples,
                nt_samples_batch_size=max(1, batch_size), stdevs=float(stdev), target=targets[i:i + 1], abs=True,
            ).detach())
    return torch.cat(out)


def occlusion(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor | float, window: int,
    stride: int, as_logits=None, batch_size: int = 8,
) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus 2014): the drop of the target logit when a ``window`` x
    ``window`` square (every channel) is set to ``baseline``, slid by ``stride``; each pixel
    gets the mean drop of the windows covering it (Captum's ``Occlusion``), about
    ``batch_size`` inputs per pass: ``N x 3 x H x W``."""
    c = x.shape[1]
    return Occlusion(_forward(model, as_logits)).attribute(
        x.detach(), sliding_window_shapes=(c, window, window), strides=(c, stride, stride), baselines=baseline,
        target=targets, perturbations_per_eval=max(1, batch_size // len(x)),
    ).detach()
