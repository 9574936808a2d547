"""Every operation on maps, in one place: normalize, smooth, threshold, components, box, blobs.

Pure NumPy/SciPy functions over ``H x W`` maps (no torch, no model). A box is
``(x0, y0, x1, y1)`` in pixel-edge coordinates: it covers columns ``x0 .. x1 - 1`` and rows
``y0 .. y1 - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from .checks import check_choice, check_threshold
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


def default_sigma(shape: tuple[int, int]) -> float:
    """Smoothing for box extraction: 16 px at 224 px, proportional to the shorter side."""
    return min(shape) * 16.0 / 224.0


def threshold_mask(saliency: np.ndarray, threshold: float) -> np.ndarray:
    """The pixels at or above ``threshold * max(saliency)``; none when the map is all zero."""
    check_threshold(threshold)
    m = np.asarray(saliency, dtype=np.float32)
    top = float(m.max()) if m.size else 0.0
    if top <= 0:
        return np.zeros(m.shape, dtype=bool)
    return m >= threshold * top


def mask_to_box(mask: np.ndarray) -> Box:
    """The extent of the ``True`` pixels of an ``H x W`` mask; the whole image if none is set."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, w, h)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def component_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box and pixel count of every 8-connected component of a mask.

    Args:
        mask: ``H x W`` bool mask.

    Returns:
        ``(boxes, sizes)``: ``boxes`` is ``n x 4`` int64 ``(x0, y0, x1, y1)`` per component and
        ``sizes`` is ``n`` int64, in the label order of ``scipy.ndimage.label`` (raster order of
        each component's first pixel), so ``argmax(sizes)`` is the component that
        :func:`select_components` keeps with ``"largest"``. ``n = 0`` for an empty mask.
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    slices = ndimage.find_objects(labels)
    boxes = np.array(
        [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices], dtype=np.int64
    )
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    return boxes, sizes


def select_components(mask: np.ndarray, components: Components = "largest") -> np.ndarray:
    """Keep the largest 8-connected component of ``mask`` (``"largest"``) or all of it."""
    check_choice("components", components, COMPONENTS)
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
    return mask_to_box(select_components(threshold_mask(saliency, threshold), components))


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


def blobs(neuron_maps: np.ndarray, percentile: float = 80.0) -> np.ndarray:
    """``k x H x W`` bool blob masks of the neuron maps (the authors' blob processing)."""
    return np.stack([blob_mask(m, percentile) for m in neuron_maps])
