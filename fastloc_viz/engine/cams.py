"""The CAM family on the project's own layer capture: Grad-CAM (token layers), Grad-CAM++,
XGrad-CAM, LayerCAM, Score-CAM and Eigen-CAM.

Captum has none of these but Grad-CAM, and torch-cam / pytorch-grad-cam register their own
hooks and read a layer as ``N x C x h x w`` only. Here one forward pass captures the probe
layer's output (:func:`capture`, through :func:`fastloc_viz.model.state.forward_hook`, undone
on exit); a ViT block's ``N x T x C`` tokens are read on their patch grid
(:mod:`fastloc_viz.model.tokens`), so every map here works on conv and token layers alike.
Each map is computed at the layer's resolution (``N x h x w``, ReLU on, as the references
compute it) and upsampled bilinearly to the input by :func:`upsample`.

The weights, with ``A`` the layer's activations, ``g`` the target logit's gradient w.r.t.
``A`` and sums over the grid positions:

* Grad-CAM: ``w_c = mean(g_c)``; Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19):
  ``w_c = sum(alpha_c * relu(g_c))``, ``alpha = g^2 / (2 g^2 + sum(A_c) g^3)`` where ``g != 0``;
  XGrad-CAM (Fu et al. 2020): ``w_c = sum(g_c * A_c) / sum(A_c)``; the map ``relu(sum_c w_c A_c)``.
* LayerCAM (Jiang et al. 2021): ``relu(sum_c relu(g_c) * A_c)``, a weight per position.
* Score-CAM (Wang et al. 2020, as torch-cam computes it): each channel, scaled to ``[0, 1]``
  and upsampled, masks the input; ``w = softmax_c(logit(x * mask_c) - logit(x))``. The masked
  forwards run ``batch_size`` at a time.
* Eigen-CAM (Muhammad and Yeasin 2020): the activations (positions x channels, centred per
  channel) projected on their first principal direction, the sign chosen so that the larger
  magnitude is positive (Seg-Eigen-CAM's Eq. 13); class-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.state import forward_hook, require_called, require_spatial
from ..model.tokens import TokenGrid, as_map, require_reach

GRADIENT_RULES = ("gradcam", "gradcam_pp", "xgradcam", "layercam")
"""The CAMs computed from one forward and one backward pass (:func:`gradient_cam`)."""

EPS = 1e-7


@dataclass
class Capture:
    """One forward pass with the probe layer's output kept.

    Attributes:
        logits: ``N x classes`` (in the graph when captured with grad).
        out: the layer's output as the model produced it (``N x C x h x w`` or ``N x T x C``).
        acts: ``out`` as a map, ``N x C x h x w``, detached.
        grid: the token grid for a token layer, else ``None``.
    """

    logits: torch.Tensor
    out: torch.Tensor
    acts: torch.Tensor
    grid: TokenGrid | None


def _forward(model: nn.Module, as_logits: Callable | None) -> Callable:
    return (lambda inp: as_logits(model(inp))) if as_logits else model


def capture(model: nn.Module, x: torch.Tensor, layer: nn.Module, name: str, as_logits=None) -> Capture:
    """Run ``model`` on ``x`` once, keeping ``layer``'s output (grad as the caller has it on).

    Raises:
        ValueError: the layer is not called exactly once, has no spatial map, or outputs 3-D
            values that are not tokens tiling the input.
    """
    seen: dict = {"calls": 0}

    def hook(_m, _inp, out):
        seen["calls"] += 1
        if seen["calls"] == 1:
            seen["out"] = out
            return out.clone() if isinstance(out, torch.Tensor) else None  # later in-place ops keep ours
        return None

    if torch.is_grad_enabled():
        x = x.detach().requires_grad_(True)  # a graph to the layer even when the weights are frozen
    with forward_hook(layer, hook):
        logits = _forward(model, as_logits)(x)
    require_called(name, seen["calls"])
    acts, grid = as_map(model, name, seen["out"], tuple(x.shape[-2:]))
    require_spatial(name, acts)
    return Capture(logits, seen["out"], acts.detach(), grid)


def layer_gradient(cap: Capture, targets: torch.Tensor, name: str) -> torch.Tensor:
    """The target logits' gradient w.r.t. the captured layer, as a map ``N x C x h x w``.

    Raises:
        ValueError: a token layer whose patch tokens do not reach the logits.
    """
    (grad,) = torch.autograd.grad(cap.logits.gather(1, targets[:, None]).sum(), cap.out)
    return require_reach(name, grad, cap.grid) if cap.grid is not None else grad


def weigh(rule: str, acts: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The ``rule``'s map at the layer's resolution, ``N x h x w``, ReLU on (module doc)."""
    spatial = (2, 3)
    if rule == "gradcam":
        cam = (grad.mean(dim=spatial, keepdim=True) * acts).sum(dim=1)
    elif rule == "gradcam_pp":
        g2 = grad.pow(2)
        alpha = g2 / (2 * g2 + acts.sum(dim=spatial, keepdim=True) * g2 * grad + EPS)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        cam = ((alpha * grad.clamp(min=0)).sum(dim=spatial, keepdim=True) * acts).sum(dim=1)
    elif rule == "xgradcam":
        w = (grad * acts).sum(dim=spatial, keepdim=True) / (acts.sum(dim=spatial, keepdim=True) + EPS)
        cam = (w * acts).sum(dim=1)
    elif rule == "layercam":
        cam = (grad.clamp(min=0) * acts).sum(dim=1)
    else:
        raise ValueError(f"rule={rule!r} is not one of {list(GRADIENT_RULES)}")
    return cam.clamp(min=0)


def gradient_cam(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, targets: torch.Tensor, rule: str, as_logits=None,
    name: str = "layer",
) -> torch.Tensor:
    """A gradient CAM (``rule`` in :data:`GRADIENT_RULES`) at the layer's resolution: ``N x h x w``."""
    if rule not in GRADIENT_RULES:
        raise ValueError(f"rule={rule!r} is not one of {list(GRADIENT_RULES)}")
    cap = capture(model, x, layer, name, as_logits)
    grad = layer_gradient(cap, targets, name)
    return weigh(rule, cap.acts, grad.detach()).detach()


def eigen_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, as_logits=None, name: str = "layer") -> torch.Tensor:
    """Eigen-CAM at the layer's resolution, ``N x h x w`` (one forward pass, no gradient)."""
    with torch.no_grad():
        acts = capture(model, x, layer, name, as_logits).acts
    n, c, h, w = acts.shape
    a = acts.double().flatten(2).transpose(1, 2)  # N x positions x channels
    a = a - a.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(a, full_matrices=False)
    proj = (a @ vh[:, 0, :, None])[..., 0]  # N x positions
    flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(n, h, w).clamp(min=0).to(acts.dtype)


def score_cam(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, targets: torch.Tensor, as_logits=None,
    name: str = "layer", batch_size: int = 8,
) -> torch.Tensor:
    """Score-CAM at the layer's resolution, ``N x h x w``: ``1 + N * C / batch_size`` forwards."""
    forward = _forward(model, as_logits)
    with torch.no_grad():
        cap = capture(model, x, layer, name, as_logits)
        acts = cap.acts
        n, c = acts.shape[:2]
        base = cap.logits.gather(1, targets[:, None])[:, 0]
        low = acts.amin(dim=(2, 3), keepdim=True)
        masks = (acts - low) / ((acts.amax(dim=(2, 3), keepdim=True) - low) + 1e-8)  # torch-cam's scaling
        masks = masks.flatten(0, 1)[:, None]  # N*C x 1 x h x w
        image = torch.arange(n, device=x.device).repeat_interleave(c)
        scores = torch.empty(n * c, dtype=acts.dtype, device=acts.device)
        for s in range(0, n * c, batch_size):
            idx = slice(s, min(s + batch_size, n * c))
            up = F.interpolate(masks[idx], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
            logits = forward(up.to(x.dtype) * x[image[idx]])
            scores[idx] = logits.gather(1, targets[image[idx], None])[:, 0].to(acts.dtype)
        weights = torch.softmax((scores - base[image]).view(n, c), dim=1)
        return (weights[:, :, None, None] * acts).sum(dim=1).clamp(min=0)


def upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A layer-resolution map ``N x h x w`` -> ``N x 1 x H x W``, bilinear (the references' way)."""
    return F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False).detach()
