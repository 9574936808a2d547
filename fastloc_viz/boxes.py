"""From maps to boxes: smoothing, thresholding, connected components, the authors' blobs.

Pure NumPy/SciPy functions over ``H x W`` maps. A box is ``(x0, y0, x1, y1)`` in pixel-edge
coordinates: it covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from .explanation import Box

Components = Literal["largest", "all"]
COMPONENTS = ("largest", "all")


def normalize(saliency: np.ndarray) -> np.ndarray:
    """Clip at 0 and scale so the maximum is 1 (an all-zero map stays zero). Returns float32."""
    m = np.clip(np.asarray(saliency, dtype=np.float32), 0, None)
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else m


def smooth(saliency: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (``0`` returns the map as is).

    Guided-backprop maps are sparse and pixel-level; thresholding them raw gives tiny
    components, so the fastloc methods blur before boxing.
    """
    m = np.asarray(saliency, dtype=np.float32)
    if sigma <= 0:
        return m
    return ndimage.gaussian_filter(m, sigma=float(sigma), mode="constant").astype(np.float32)


def mask_to_box(mask: np.ndarray) -> Box:
    """The extent of the ``True`` pixels of an ``H x W`` mask; the whole image if none is set."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, w, h)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def select_components(mask: np.ndarray, components: Components = "largest") -> np.ndarray:
    """Keep the largest 8-connected component of ``mask`` (``"largest"``) or all of it."""
    if components not in COMPONENTS:
        raise ValueError(f"components={components!r} is not one of {COMPONENTS}")
    if components == "all" or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def map_to_box(
    saliency: np.ndarray, threshold: float = 0.3, components: Components = "largest"
) -> Box:
    """Box of the pixels at or above ``threshold * max(saliency)``.

    Args:
        saliency: ``H x W`` map (any non-negative scale).
        threshold: fraction of the map's maximum, in ``[0, 1]``.
        components: ``"largest"`` keeps the largest connected component, ``"all"`` boxes
            every component together (as WSOL-evaluation's MaxBoxAccV2 does).

    Returns:
        ``(x0, y0, x1, y1)``; the whole image when the map is all zero.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} must be a fraction in [0, 1]")
    m = np.asarray(saliency, dtype=np.float32)
    top = float(m.max()) if m.size else 0.0
    if top <= 0:
        return mask_to_box(np.zeros(m.shape, dtype=bool))
    return mask_to_box(select_components(m >= threshold * top, components))


def boxes_at_thresholds(
    saliency: np.ndarray, thresholds: Sequence[float], components: Components = "largest"
) -> list[Box]:
    """:func:`map_to_box` at each threshold (for threshold sweeps such as MaxBoxAcc)."""
    return [map_to_box(saliency, t, components) for t in thresholds]


def blob_mask(
    neuron_map: np.ndarray, percentile: float = 80.0, closing: int = 3
) -> np.ndarray:
    """The authors' blob: the pixels above a percentile of the map's positive values, closed.

    Args:
        neuron_map: ``H x W`` map (a guided-backprop map averaged over colour channels).
        percentile: keep pixels above this percentile of the strictly positive values.
        closing: iterations of morphological dilation then erosion (3x3) that fill the gaps
            between the sparse guided-backprop pixels.

    Returns:
        ``H x W`` bool mask (all ``False`` if the map has no positive value).
    """
    m = np.asarray(neuron_map, dtype=np.float32)
    pos = m[m > 0]
    if pos.size == 0:
        return np.zeros(m.shape, dtype=bool)
    mask = m > np.percentile(pos, percentile)
    if closing > 0:
        mask = ndimage.binary_closing(
            mask, structure=np.ones((3, 3), dtype=bool), iterations=closing, border_value=0
        )
    return mask
