"""Every operation on maps, in one place: normalize, smooth, threshold, components, box, box
score and kind, blobs.

Pure NumPy/SciPy functions over ``H x W`` maps (no torch, no model). A box is
``(x0, y0, x1, y1)`` in pixel-edge coordinates: it covers columns ``x0 .. x1 - 1`` and rows
``y0 .. y1 - 1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from .checks import check_choice, check_threshold
from .results import Box

Components = Literal["peak", "largest", "all", "merged"]
COMPONENTS = ("peak", "largest", "all", "merged")
"""How a thresholded map becomes a box: ``"peak"`` (default) the connected component that holds
the map's peak, ``"largest"`` the component with the most pixels (WSOL-evaluation's MaxBoxAcc),
``"all"`` one box per component, each with a score (the primary box is the peak's),
``"merged"`` one box around every component together."""


class EmptyMapWarning(UserWarning):
    """A map is all zero, so it has no box (:func:`box_fields`). Filter it by this class."""


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


def peak(saliency: np.ndarray) -> tuple[int, int] | None:
    """``(row, col)`` of the map's first maximum in raster order; ``None`` if it is all zero."""
    m = np.asarray(saliency)
    if m.size == 0 or not float(m.max()) > 0:
        return None
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(y), int(x)


def mask_to_box(mask: np.ndarray) -> Box | None:
    """The extent of the ``True`` pixels of an ``H x W`` mask; ``None`` if none is set."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels, n)``: the 8-connected components of a mask, labelled ``1 .. n`` in raster
    order of each component's first pixel (``scipy.ndimage.label``)."""
    return ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))


def component_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box and pixel count of every 8-connected component of a mask.

    Args:
        mask: ``H x W`` bool mask.

    Returns:
        ``(boxes, sizes)``: ``boxes`` is ``n x 4`` int64 ``(x0, y0, x1, y1)`` per component and
        ``sizes`` is ``n`` int64, in the label order of :func:`label_components`, so
        ``argmax(sizes)`` is the component that ``"largest"`` keeps. ``n = 0`` for an empty mask.
    """
    labels, n = label_components(mask)
    return component_boxes_of(labels, n)


def component_boxes_of(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`component_boxes` from labels already computed by :func:`label_components`."""
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    slices = ndimage.find_objects(labels)
    boxes = np.array(
        [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices], dtype=np.int64
    )
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    return boxes, sizes


def select_components(
    mask: np.ndarray, components: Components = "peak", saliency: np.ndarray | None = None
) -> np.ndarray:
    """The pixels of ``mask`` that the box is made of.

    ``"peak"``: the component holding the peak of ``saliency`` (needed then; when the peak is
    not in the mask, the largest component); ``"largest"``: the component with the most
    pixels (the first in raster order on a tie); ``"all"`` and ``"merged"``: every component.
    """
    check_choice("components", components, COMPONENTS)
    if components in ("all", "merged") or not mask.any():
        return mask
    labels, n = label_components(mask)
    if n <= 1:
        return mask
    if components == "peak":
        if saliency is None:
            raise ValueError("components='peak' needs the saliency map whose peak it keeps")
        at = peak(saliency)
        if at is not None and labels[at] > 0:
            return labels == labels[at]
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def map_to_box(
    saliency: np.ndarray, threshold: float, components: Components = "peak"
) -> Box | None:
    """Box of the pixels at or above ``threshold * max(saliency)``.

    Args:
        saliency: ``H x W`` map (any non-negative scale).
        threshold: fraction of the map's maximum, in ``[0, 1]`` (no default here: a method's
            default threshold lives in its registered parameters).
        components: see :data:`COMPONENTS`; ``"all"`` gives the peak's component here (its
            other boxes come from :func:`scored_boxes`).

    Returns:
        ``(x0, y0, x1, y1)``; ``None`` when the map is all zero (there is nothing to box).
    """
    which = "peak" if components == "all" else components
    return mask_to_box(select_components(threshold_mask(saliency, threshold), which, saliency))


def scored_boxes(saliency: np.ndarray, threshold: float) -> list[tuple[Box, float]]:
    """One box per connected component of the thresholded map, with the component's score.

    The score is the map's maximum inside the component, as a fraction of the map's maximum
    (so the peak's component scores 1.0). Sorted by score, best first (ties: raster order).
    Empty for an all-zero map. MaxBoxAccV2 (WSOL-evaluation) scores a query by the best of
    these boxes; a detector-style evaluation (COCO AP) ranks them by the score.
    """
    m = np.asarray(saliency, dtype=np.float32)
    mask = threshold_mask(m, threshold)
    labels, n = label_components(mask)
    if n == 0:
        return []
    boxes, _ = component_boxes_of(labels, n)
    top = float(m.max())
    scores = ndimage.maximum(m, labels, index=np.arange(1, n + 1)) / top
    order = sorted(range(n), key=lambda i: -float(scores[i]))
    return [(tuple(int(v) for v in boxes[i]), round(float(scores[i]), 6)) for i in order]


BoxKind = Literal["object", "whole", "diffuse"]
BOX_KINDS = ("object", "whole", "diffuse")
"""What a box is (:func:`box_kind`): ``"whole"`` covers (nearly) the whole image, ``"diffuse"``
comes from a map that does not single it out, ``"object"`` is every other box."""
WHOLE_AREA = 0.9
"""A box covering at least this share of the image's area is a ``"whole"`` box."""
DIFFUSE_RATIO = 0.5
"""A box is ``"diffuse"`` when the map's mean outside it is at least this share of its mean
inside it."""


def _box_masses(saliency: np.ndarray, box: Box) -> tuple[float, float, int, int]:
    """``(mass inside, mass outside, pixels inside, pixels outside)`` of the map clipped at 0."""
    m = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    x0, y0, x1, y1 = (int(v) for v in box)
    inside = float(m[y0:y1, x0:x1].sum())
    n_in = max(0, x1 - x0) * max(0, y1 - y0)
    return inside, max(float(m.sum()) - inside, 0.0), n_in, m.size - n_in


def box_score(saliency: np.ndarray, box: Box | None) -> float | None:
    """How sure a box is: the share of the map's mass inside it, in ``[0, 1]``.

    The map is the one the box came from (``Explanation.saliency``), clipped at 0; the score is
    its sum inside the box over its sum over the image, rounded to 6 digits (``None`` without a
    box, 0 for an all-zero map). It needs no forward pass, and it measures what makes a box
    unsure: evidence for the class that the box leaves out (another instance, a part the
    threshold cut off, a map spread over the image). A box covering the whole image holds all
    the mass by construction, so it scores about 1 whatever the map: :func:`box_kind` marks it
    ``"whole"``. This is the COCO ``score`` and the CSV's ``score`` of ``fastloc-viz boxes``,
    BoxReview's sort key and the explorer's caption.
    """
    if box is None:
        return None
    inside, outside, _, _ = _box_masses(saliency, box)
    total = inside + outside
    return round(inside / total, 6) if total > 0 else 0.0


def box_kind(saliency: np.ndarray, box: Box | None) -> BoxKind | None:
    """What a box is (``None`` without a box), by the first rule that holds:

    * ``"whole"``: the box covers at least :data:`WHOLE_AREA` (90 %) of the image's area: it
      says little about where the class is;
    * ``"diffuse"``: outside the box the map's mean is at least :data:`DIFFUSE_RATIO` (half)
      of its mean inside it: the map is spread over the image and does not single the box out
      (an all-zero map counts as diffuse);
    * ``"object"``: every other box.
    """
    if box is None:
        return None
    inside, outside, n_in, n_out = _box_masses(saliency, box)
    if n_in >= WHOLE_AREA * (n_in + n_out):
        return "whole"
    if inside <= 0 or outside / n_out >= DIFFUSE_RATIO * inside / n_in:
        return "diffuse"
    return "object"


def box_fields(saliency: np.ndarray, threshold: float, components: Components, what: str = "the map") -> dict:
    """``Explanation``'s ``box``, ``box_score``, ``box_kind`` and ``boxes`` for a map: the box of
    :func:`map_to_box`, its :func:`box_score` and :func:`box_kind`, and with
    ``components="all"`` every component's scored box (else ``boxes=None``).

    An all-zero map has nothing to box: ``box=None`` (``boxes=()``), with a warning naming
    ``what``.
    """
    box = map_to_box(saliency, threshold, components)
    if box is None:
        warnings.warn(
            f"{what} is all zero: no box (nothing in the image raised the class score along this "
            "method's path; try another layer, method or class)",
            EmptyMapWarning,
            stacklevel=3,
        )
    boxes = tuple(scored_boxes(saliency, threshold)) if components == "all" else None
    return {"box": box, "box_score": box_score(saliency, box), "box_kind": box_kind(saliency, box), "boxes": boxes}


def boxes_at_thresholds(
    saliency: np.ndarray, thresholds: Sequence[float], components: Components = "peak"
) -> list[Box | None]:
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
