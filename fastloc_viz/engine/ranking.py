"""Ranking the probe layer's units: activation x gradient, one neuron per channel."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Ranked(NamedTuple):
    """The kept neurons of each image, best first; every field is ``N x k``."""

    channel: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    score: torch.Tensor


def rank_neurons(scores: torch.Tensor, k: int) -> Ranked:
    """Keep the ``k`` best units of each image, at most one per channel.

    Equivalent to walking down the units sorted by score (ties broken by the flat index
    ``c*h*w + y*w + x``) and keeping a unit only if its channel was not kept yet.

    Args:
        scores: ``N x C x h x w`` rank scores (``activation * gradient``).
        k: neurons to keep, ``1 <= k <= C``.

    Returns:
        :class:`Ranked` with ``N x k`` channel, y, x and score tensors.
    """
    n, c, h, w = scores.shape
    if not 1 <= k <= c:
        raise ValueError(f"k={k} must be between 1 and the layer's {c} channels")
    # max() returns the first maximal index, so within a channel the lowest flat index wins.
    best, where = scores.reshape(n, c, h * w).max(dim=2)
    order = torch.sort(best, dim=1, descending=True, stable=True).indices[:, :k]
    pos = where.gather(1, order)
    return Ranked(order, pos // w, pos % w, best.gather(1, order))
