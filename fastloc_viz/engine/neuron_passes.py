"""The FastLoc engine: one forward pass, the neuron ranking, and k partial backward passes.

One forward pass builds one graph. From it: one backward pass from the target logits to the
probe layer gives the rank scores (and, from the same gradient, the layer's Grad-CAM: the
class-level map), and k partial backward passes from single neurons of the layer down to the
image give the neuron maps. The methods that use it live in :mod:`fastloc_viz.methods`; the
rules that combine the maps in :mod:`fastloc_viz.methods.combine`. The k passes run as a loop over the kept graph
(fastest on CPU) or as one batched call (``torch.func.vmap`` over the k seeds, for GPUs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.results import Neuron
from ..model.bundle import resolve_targets
from ..model.state import forward_hook, require_called, require_spatial
from ..model.tokens import as_map, require_reach
from .activations import activation_maps
from .guided import GuidedMode
from .ranking import Ranked, rank_neurons

RankGrad = Literal["guided", "plain"]
Passes = Literal["auto", "loop", "batched"]
RANK_GRADS = ("guided", "plain")
PASSES = ("auto", "loop", "batched")


@dataclass
class NeuronPass:
    """What one forward pass and its partial backward passes produced for a batch.

    Attributes:
        logits: ``N x classes``, detached.
        targets: ``N`` class indices the ranking used.
        ranked: the kept neurons, ``N x k`` each.
        activation, gradient: ``N x k`` values of the kept units.
        input_grads: ``N x k x 3 x H x W`` guided gradients of each neuron w.r.t. the input.
        activation_maps: ``N x k x H x W`` float32, the kept units' channels of the probe
            layer's activation, oriented by the kept unit's sign, upsampled to the input and
            scaled to ``[0, 1]`` (see
            :func:`fastloc_viz.engine.activations.activation_maps`; from the forward pass, no extra pass).
        class_map: ``N x H x W`` Grad-CAM of the probe layer computed from the ranking's
            gradient (ReLU on, bilinearly upsampled to the input), detached; with
            ``rank_grad="plain"`` it equals Captum's ``LayerGradCam`` at that layer.
        layer_shape: ``(C, h, w)``.
        mode: the :class:`GuidedMode` used (holds which activations it met).
        timings: seconds per stage.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    ranked: Ranked
    activation: torch.Tensor
    gradient: torch.Tensor
    input_grads: torch.Tensor
    class_map: torch.Tensor
    activation_maps: torch.Tensor
    layer_shape: tuple[int, int, int]
    mode: GuidedMode
    timings: dict[str, float]


def neuron_pass(
    model: nn.Module,
    x: torch.Tensor,
    layer: tuple[str, nn.Module],
    targets: Sequence[int | None],
    k: int,
    rank_grad: RankGrad = "plain",
    passes: Passes = "auto",
    as_logits=None,
) -> NeuronPass:
    """Forward once, rank the probe layer's units, guided-backprop from the top ``k``.

    The model must already be in eval mode with grad enabled, holding its lock (see
    :func:`fastloc_viz.model.state.preserved`).

    Args:
        model: the classifier.
        x: ``N x 3 x H x W`` model input (normalized).
        layer: ``(name, module)`` of the probe layer.
        targets: one class index per image, ``None`` for the top-1 prediction.
        k: neurons to keep per image (one per channel).
        rank_grad: ``"plain"`` uses the plain gradient (the default: class-specific);
            ``"guided"`` gates it at every ReLU above the layer (the authors' choice).
        passes: ``"loop"``, ``"batched"`` or ``"auto"`` (batched on GPU, loop on CPU).
        as_logits: callable turning the model's output into logits.
    """
    name = layer[0]
    if passes == "auto":
        passes = "loop" if x.device.type == "cpu" else "batched"
    if passes not in PASSES:
        raise ValueError(f"passes={passes!r} is not one of {PASSES}")
    t0 = time.perf_counter()
    x = x.detach().requires_grad_(True)
    fwd = _forward(model, x, layer, rank_grad, as_logits)
    acts = fwd.acts
    if k > acts.shape[1]:
        raise ValueError(f"k={k} is larger than the {acts.shape[1]} channels of layer {name!r}")
    tgt = resolve_targets(fwd.logits, targets)
    t1 = time.perf_counter()
    grad, ranked, cam = _rank(fwd, name, tgt, k, tuple(x.shape[-2:]))
    t2 = time.perf_counter()
    flat, g = _neuron_grads(acts, x, ranked, passes)
    t3 = time.perf_counter()
    n = acts.shape[0]
    a_flat, g_flat = acts.detach().reshape(n, -1), grad.reshape(n, -1)
    unit_acts = a_flat.gather(1, flat)
    return NeuronPass(
        logits=fwd.logits.detach(),
        targets=tgt,
        ranked=ranked,
        activation=unit_acts,
        gradient=g_flat.gather(1, flat),
        input_grads=g.transpose(0, 1).detach(),
        class_map=cam.detach(),
        activation_maps=activation_maps(acts.detach(), ranked.channel, tuple(x.shape[-2:]), unit_acts),
        layer_shape=tuple(acts.shape[1:]),
        mode=fwd.mode,
        timings={"forward": t1 - t0, "rank": t2 - t1, "neurons": t3 - t2},
    )


@dataclass
class _Forward:
    """The forward pass: logits, the probe layer's output as hooked (``out``: what the
    ranking differentiates against) and as a map (``acts``; ``grid``: a token layer's patch
    grid, else ``None``), and the guided mode."""

    logits: torch.Tensor
    out: torch.Tensor
    acts: torch.Tensor
    grid: object
    mode: GuidedMode


def _forward(model: nn.Module, x: torch.Tensor, layer: tuple[str, nn.Module], rank_grad: RankGrad, as_logits) -> _Forward:
    """One forward pass under the guided mode, the probe layer's output kept (and cloned)."""
    name, module = layer
    mode = GuidedMode(guided=True)
    seen: dict = {"calls": 0}

    def hook(_m, _inp, out):
        seen["calls"] += 1
        if seen["calls"] > 1:
            return None
        seen["out"] = out
        if not (isinstance(out, torch.Tensor) and out.dim() in (3, 4)):  # 3: a ViT block's tokens
            return None
        mode.guided = rank_grad == "guided"
        # Downstream ops (an inplace ReLU, `out += identity`) must not modify the tensor we
        # differentiate against.
        return out.clone()

    with forward_hook(module, hook), mode:
        out = model(x)
    logits = as_logits(out) if as_logits else out
    require_called(name, seen["calls"])
    # A token layer's N x T x C output becomes its N x C x h x w patch grid: a differentiable
    # reshape of the tokens, so the neuron passes below start from the grid directly.
    acts, grid = as_map(model, name, seen["out"], tuple(x.shape[-2:]))
    require_spatial(name, acts)
    return _Forward(logits=logits, out=seen["out"], acts=acts, grid=grid, mode=mode)


def _rank(fwd: _Forward, name: str, targets: torch.Tensor, k: int, size: tuple[int, int]):
    """The gradient of the target logits at the probe layer, the top ``k`` units by
    activation x gradient, and the layer's Grad-CAM from the same gradient."""
    score = fwd.logits.gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(score, fwd.out, retain_graph=True)
    if fwd.grid is not None:  # the tokens' gradient through the same (index-only) reshape
        grad = require_reach(name, grad, fwd.grid)
    acts = fwd.acts.detach()
    ranked = rank_neurons(acts * grad, k)
    # Grad-CAM of the same layer from the same gradient: channel weights = spatial mean.
    cam = (grad.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True).clamp(min=0)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    return grad, ranked, cam


def _neuron_grads(acts: torch.Tensor, x: torch.Tensor, ranked: Ranked, passes: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept units' flat indices (``N x k``) and their guided gradients w.r.t. ``x``
    (``k x N x 3 x H x W``): one partial backward pass per unit, looped or batched."""
    n, c, h, w = acts.shape
    k = ranked.channel.shape[1]
    rows = torch.arange(n, device=acts.device)[:, None].expand(n, k)
    flat = ranked.channel * (h * w) + ranked.y * w + ranked.x  # N x k
    seeds = torch.zeros(k, n, c * h * w, dtype=acts.dtype, device=acts.device)
    seeds[torch.arange(k, device=acts.device)[None, :].expand(n, k), rows, flat] = 1.0
    seeds = seeds.view(k, n, c, h, w)
    if passes == "batched":
        # torch.func.vmap, not `is_grads_batched=True`: that one runs on the legacy vmap
        # prototype, which has no batching rule for convolution_backward, batch-norm backward,
        # hardtanh_backward or max-pool backward and silently loops over the k seeds for each.
        g = torch.func.vmap(lambda seed: torch.autograd.grad(acts, x, grad_outputs=seed)[0])(seeds)
    else:
        g = torch.stack(
            [torch.autograd.grad(acts, x, grad_outputs=seeds[j], retain_graph=j < k - 1)[0] for j in range(k)]
        )
    return flat, g


def grads_to_maps(input_grads: torch.Tensor) -> np.ndarray:
    """Guided gradients ``... x 3 x H x W`` -> maps ``... x H x W`` in ``[0, 1]``.

    As the authors do: the mean over colour channels, its positive part, each map scaled by
    its own maximum (per-neuron normalization).
    """
    m = input_grads.float().mean(dim=-3).clamp(min=0)  # float: bfloat16 has no numpy dtype
    top = m.flatten(-2).amax(dim=-1).clamp(min=torch.finfo(m.dtype).tiny)
    return (m / top[..., None, None]).cpu().numpy().astype(np.float32)


@torch.no_grad()
def rescore(
    model: nn.Module, x: torch.Tensor, masks: np.ndarray, target: int, as_logits=None
) -> np.ndarray:
    """Target logit of the image masked to each blob, in one batched forward pass.

    Args:
        x: ``1 x 3 x H x W`` model input (normalized); outside a blob it is set to 0, the
            normalization's mean colour.
        masks: ``m x H x W`` bool.

    Returns:
        ``m`` target logits.
    """
    m = torch.from_numpy(masks).to(device=x.device, dtype=x.dtype)[:, None]
    out = model(x.detach() * m)
    logits = as_logits(out) if as_logits else out
    return logits[:, target].float().cpu().numpy()


def neurons_of(np_: NeuronPass, i: int, order: Sequence[int], rescored: Sequence[float] | None = None) -> tuple[Neuron, ...]:
    """The :class:`Neuron` records of image ``i`` for the candidate indices ``order``."""
    r = np_.ranked
    return tuple(
        Neuron(
            rank=j + 1,
            channel=int(r.channel[i, o]),
            y=int(r.y[i, o]),
            x=int(r.x[i, o]),
            score=float(r.score[i, o]),
            activation=float(np_.activation[i, o]),
            gradient=float(np_.gradient[i, o]),
            rescored=None if rescored is None else float(rescored[j]),
        )
        for j, o in enumerate(order)
    )
