"""Per-neuron views that cost no extra pass: where a kept neuron's channel fires, and how
alike a set of per-neuron maps is.

The activation map of a kept neuron is its channel of the probe layer's forward activation
on this image, upsampled bilinearly to the input grid (as the layer's Grad-CAM is), oriented
by the sign of the kept unit's own activation, its positive part scaled by its maximum. The
orientation matters: a probe layer without a final activation (EfficientNet's block outputs)
has negative units, and the ranking keeps a unit with a negative activation when its gradient
is negative too; its map then shows where the channel is strongly negative, as the unit is. It comes from the tensor the neuron pass already holds,
so it adds no forward or backward pass. Unlike the neuron's guided-backprop map, which
mostly redraws the image's edges whichever unit it starts from (docs/method.md), it differs
from channel to channel: it shows where this channel responds, and the neuron's own unit is
one cell of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["activation_maps", "mean_pairwise_correlation", "pairwise_correlations"]


def activation_maps(
    acts: torch.Tensor, channels: torch.Tensor, size: tuple[int, int], signs: torch.Tensor | None = None
) -> torch.Tensor:
    """The kept channels' activation maps on the input grid, each scaled to ``[0, 1]``.

    Args:
        acts: ``N x C x h x w`` probe-layer activations (detached).
        channels: ``N x k`` channel indices.
        size: ``(H, W)`` of the input grid.
        signs: ``N x k``, the kept units' activations (only their signs are used): a channel
            whose unit is negative is negated first. ``None``: no orientation.

    Returns:
        ``N x k x H x W`` float32 (on ``acts``' device): orientation, bilinear upsampling
        (``align_corners=False``), then the positive part divided by its maximum; a channel
        with no activation of the unit's sign on the image gives an all-zero map.
    """
    n, c, h, w = acts.shape
    k = channels.shape[1]
    idx = channels.to(acts.device)[:, :, None, None].expand(n, k, h, w)
    kept = acts.detach().gather(1, idx).float()
    if signs is not None:
        kept = kept * torch.where(signs.to(kept.device) < 0, -1.0, 1.0)[:, :, None, None]
    up = F.interpolate(kept, size=tuple(size), mode="bilinear", align_corners=False).clamp(min=0)
    top = up.flatten(2).amax(dim=2)[:, :, None, None]
    return torch.where(top > 0, up / top.clamp(min=torch.finfo(up.dtype).tiny), torch.zeros_like(up))


def pairwise_correlations(maps: np.ndarray) -> np.ndarray:
    """Pearson correlation of every pair of ``k x H x W`` maps: a ``k x k`` matrix.

    A constant map has no defined correlation: its row and column are ``nan``.
    """
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    m = m - m.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(m, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = m / norm[:, None]
        corr = u @ u.T
    corr[norm == 0, :] = np.nan
    corr[:, norm == 0] = np.nan
    return corr


def mean_pairwise_correlation(maps: np.ndarray) -> float:
    """The mean Pearson correlation over the ``k (k - 1) / 2`` pairs of maps (``nan`` when
    fewer than two maps, or no pair is defined). 1 means the maps are copies of each other."""
    k = len(maps)
    if k < 2:
        return float("nan")
    corr = pairwise_correlations(maps)
    vals = corr[np.triu_indices(k, 1)]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else float("nan")
