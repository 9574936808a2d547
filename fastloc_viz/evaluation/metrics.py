"""Localization metrics: IoU, GT-known / top-1 localization, MaxBoxAcc(V2), pointing game.

Pure NumPy functions plus :class:`LocalizationCounts`, an accumulator of integer counts that
can be merged (or all-reduced across ``torchrun`` ranks) exactly.

Conventions
-----------
* A box is ``(x0, y0, x1, y1)`` in pixel-edge coordinates of the model's input grid (a box
  ``(0, 0, 2, 2)`` covers four pixels, area 4). Ground-truth boxes may have float coordinates.
* A saliency map is ``H x W``, non-negative. A threshold ``t`` is a fraction of the map's
  maximum, as in :func:`fastloc_viz.core.maps.map_to_box`: the mask is ``map >= t * max(map)``, so a
  best threshold found here can be passed back as ``explain(..., threshold=t)``.
* One query is one (image, target class) pair: the target is the data set's label, never the
  prediction ("GT-known"); the prediction only enters top-1 localization.

Definitions (per query; a rate is the count over the number of queries)
-----------------------------------------------------------------------
IoU
    ``area(a & b) / area(a | b)`` of two boxes, ``0`` when the union is empty.
GT-known localization
    The method's own box (``Explanation.box``, at the method's own threshold: the box a user
    gets) has IoU >= 0.5 with at least one ground-truth box of the query. No box (an all-zero
    map) is a miss.
Top-1 localization
    GT-known localization and the model's top-1 class equals the label.
MaxBoxAcc(delta)
    Sweep thresholds ``t`` (default ``0.00, 0.01, ..., 0.99``, as WSOL-evaluation does); at
    each ``t`` box the largest 8-connected component of the mask; a query is a hit at ``t`` if
    that box has IoU >= delta with any ground-truth box. MaxBoxAcc(delta) is the best rate over
    ``t``, and that ``t`` is reported. Reported for delta = 0.3, 0.5, 0.7 (``maxboxacc_30`` ...).
MaxBoxAccV2
    WSOL-evaluation (Choe et al., CVPR 2020): as MaxBoxAcc but every connected component gives a
    box and the query is a hit at ``t`` if *any* component box has IoU >= delta with any
    ground-truth box; the best ``t`` is chosen per delta, and MaxBoxAccV2 is the mean over
    delta = 0.3, 0.5, 0.7. (Their code boxes OpenCV contours, which also include holes; here the
    components are 8-connected regions, which is what the outer contours are.)
Peak-box accuracy (``boxacc_peak_50``, per threshold in ``curves()["peak_50"]``)
    As MaxBoxAcc(0.5), but the box is the component holding the map's peak: fastloc_viz's
    default box (``components="peak"``). Its value at a method's default threshold is the
    GT-known localization of that default; the curve is what the default threshold is
    chosen from.
Pointing game
    The map's peak (the first maximum in raster order, at its pixel centre) lies within
    ``tolerance`` pixels (Euclidean, default 15, on the input grid) of a ground-truth box.
    An all-zero map has no peak and is a miss.
Centre in box
    The centre of the method's own box lies inside (edges included) a ground-truth box: the
    figure the poster's authors quoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.maps import component_boxes, component_boxes_of, label_components  # noqa: F401 (re-exported)

IOU_LEVELS: tuple[float, ...] = (0.3, 0.5, 0.7)
"""The IoU levels ``delta`` of MaxBoxAcc and MaxBoxAccV2."""

DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(0, 100) / 100, 2)
"""``0.00, 0.01, ..., 0.99``: WSOL-evaluation's ``cam_curve_interval = 0.01`` sweep."""

POINTING_TOLERANCE = 15.0
"""Pixels of slack of the pointing game (Zhang et al., ECCV 2016)."""


def _as_boxes(boxes: Any) -> np.ndarray:
    given = np.asarray(boxes, dtype=np.float64)
    b = given[None, :] if given.ndim == 1 else given
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be n x 4 (x0, y0, x1, y1), got shape {given.shape}")
    return b


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b``.

    Args:
        a: ``n x 4`` (or one box of 4) ``(x0, y0, x1, y1)``.
        b: ``m x 4`` (or one box of 4).

    Returns:
        ``n x m`` float64 in ``[0, 1]``; ``0`` where the union is empty.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes ``(x0, y0, x1, y1)``: intersection area over union area (0 if empty)."""
    return float(iou_matrix(a, b)[0, 0])


def best_iou(box: Sequence[float], gt_boxes: Any) -> float:
    """The IoU of ``box`` with its best-matching ground-truth box (``gt_boxes``: ``m x 4``)."""
    return float(iou_matrix(box, gt_boxes).max(initial=0.0))


def sweep_ious(
    saliency: np.ndarray, gt_boxes: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """``(largest, all_)`` of :func:`sweep_all` (MaxBoxAcc's and MaxBoxAccV2's IoUs)."""
    largest, all_, _ = sweep_all(saliency, gt_boxes, thresholds)
    return largest, all_


def sweep_all(
    saliency: np.ndarray, gt_boxes: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best IoU with the ground truth at every threshold of a sweep.

    Args:
        saliency: ``H x W`` non-negative map.
        gt_boxes: ``m x 4`` ground-truth boxes on the same grid.
        thresholds: ``T`` fractions of the map's maximum.

    Returns:
        ``(largest, all_, peak)``, each ``T`` float64: at each threshold, the best IoU (over
        the ground-truth boxes) of the largest component's box (MaxBoxAcc), the best IoU over
        every component's box (MaxBoxAccV2), and the IoU of the box of the component holding
        the map's peak (the default box). An all-zero map has no box: IoU 0 everywhere.
    """
    s = np.asarray(saliency, dtype=np.float32)
    gt = _as_boxes(gt_boxes)
    h, w = s.shape
    top = float(s.max()) if s.size else 0.0
    largest = np.zeros(len(thresholds), dtype=np.float64)
    all_ = np.zeros(len(thresholds), dtype=np.float64)
    peak = np.zeros(len(thresholds), dtype=np.float64)
    if top <= 0:
        return largest, all_, peak
    py, px = np.unravel_index(int(np.argmax(s)), s.shape)
    # Masks of ascending thresholds are nested, so an unchanged pixel count means an
    # unchanged mask: reuse the previous threshold's answer instead of labelling again.
    ascending = bool(np.all(np.diff(np.asarray(thresholds, dtype=np.float64)) >= 0))
    # With ascending thresholds each mask lies inside the previous one's extent: label only
    # that window (the raster order, hence the component order, is unchanged by cropping).
    y0, y1, x0, x1 = 0, h, 0, w
    previous = -1
    for i, t in enumerate(thresholds):
        mask = s[y0:y1, x0:x1] >= np.float32(t) * np.float32(top)
        count = int(np.count_nonzero(mask))
        if ascending and count == previous:
            largest[i], all_[i], peak[i] = largest[i - 1], all_[i - 1], peak[i - 1]
            continue
        previous = count
        labels, n = label_components(mask)
        boxes, sizes = component_boxes_of(labels, n)
        if len(boxes) == 0:  # only past the maximum (t > 1)
            continue
        boxes = boxes + np.array([x0, y0, x0, y0])
        best = iou_matrix(boxes, gt).max(axis=1)
        largest[i] = best[int(np.argmax(sizes))]
        all_[i] = best.max()
        holder = labels[py - y0, px - x0] if y0 <= py < y1 and x0 <= px < x1 else 0
        peak[i] = best[holder - 1] if holder > 0 else largest[i]
        if ascending:
            y0, x0 = int(boxes[:, 1].min()), int(boxes[:, 0].min())
            y1, x1 = int(boxes[:, 3].max()), int(boxes[:, 2].max())
    return largest, all_, peak


def map_peak(saliency: np.ndarray) -> tuple[float, float] | None:
    """The ``(x, y)`` centre of the map's first maximum pixel (raster order); ``None`` if the
    map is all zero (or empty)."""
    s = np.asarray(saliency)
    if s.size == 0 or not float(s.max()) > 0:
        return None
    y, x = np.unravel_index(int(np.argmax(s)), s.shape)
    return float(x) + 0.5, float(y) + 0.5


def point_box_distance(point: tuple[float, float], boxes: Any) -> np.ndarray:
    """Euclidean distance of ``(x, y)`` to each box (``0`` inside or on an edge). Returns ``m``."""
    b = _as_boxes(boxes)
    x, y = point
    dx = np.maximum(np.maximum(b[:, 0] - x, x - b[:, 2]), 0.0)
    dy = np.maximum(np.maximum(b[:, 1] - y, y - b[:, 3]), 0.0)
    return np.hypot(dx, dy)


def pointing_hit(
    saliency: np.ndarray, gt_boxes: Any, tolerance: float = POINTING_TOLERANCE
) -> bool:
    """Pointing game: the map's peak lies within ``tolerance`` pixels of a ground-truth box."""
    peak = map_peak(saliency)
    if peak is None:
        return False
    return bool(point_box_distance(peak, gt_boxes).min() <= tolerance)


def centre_in_box(box: Sequence[float], gt_boxes: Any) -> bool:
    """The centre of ``box`` lies inside (edges included) one of ``gt_boxes``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return bool(point_box_distance(((x0 + x1) / 2, (y0 + y1) / 2), gt_boxes).min() == 0.0)


@dataclass(frozen=True)
class QueryResult:
    """Everything the metrics need from one query, JSON-serialisable via :meth:`to_dict`.

    Attributes:
        row: the query's row in the data set.
        label: the target class (the row's label).
        prediction: the model's top-1 class.
        box_iou: best IoU of the method's own box with the ground truth.
        pointing: pointing-game hit.
        centre_in_box: the method's box centre is inside a ground-truth box.
        iou_largest: ``T`` best IoU of the largest-component box at each threshold.
        iou_all: ``T`` best IoU over all component boxes at each threshold.
        time_s: seconds the method took on this query.
        iou_peak: ``T`` IoU of the peak's component box at each threshold (empty in results
            saved before it existed).
    """

    row: int
    label: int
    prediction: int
    box_iou: float
    pointing: bool
    centre_in_box: bool
    iou_largest: tuple[float, ...]
    iou_all: tuple[float, ...]
    time_s: float = 0.0
    iou_peak: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "label": self.label,
            "prediction": self.prediction,
            "box_iou": self.box_iou,
            "pointing": self.pointing,
            "centre_in_box": self.centre_in_box,
            "iou_largest": list(self.iou_largest),
            "iou_all": list(self.iou_all),
            "time_s": self.time_s,
            "iou_peak": list(self.iou_peak),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QueryResult:
        return cls(
            row=int(d["row"]),
            label=int(d["label"]),
            prediction=int(d["prediction"]),
            box_iou=float(d["box_iou"]),
            pointing=bool(d["pointing"]),
            centre_in_box=bool(d["centre_in_box"]),
            iou_largest=tuple(float(v) for v in d["iou_largest"]),
            iou_all=tuple(float(v) for v in d["iou_all"]),
            time_s=float(d.get("time_s", 0.0)),
            iou_peak=tuple(float(v) for v in d.get("iou_peak", ())),
        )


def score_query(
    saliency: np.ndarray,
    box: Sequence[float] | None,
    gt_boxes: Any,
    *,
    row: int,
    label: int,
    prediction: int,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    tolerance: float = POINTING_TOLERANCE,
    time_s: float = 0.0,
) -> QueryResult:
    """Score one query.

    Args:
        saliency: ``H x W`` localization map on the input grid.
        box: the method's own box ``(x0, y0, x1, y1)``; ``None``: no box (a miss).
        gt_boxes: ``m x 4`` ground-truth boxes on the same grid.
        row, label, prediction: the query's row, its label (the target) and the top-1 class.
        thresholds: the sweep of MaxBoxAcc.
        tolerance: pointing-game slack in pixels.
        time_s: the method's seconds on this query.
    """
    gt = _as_boxes(gt_boxes)
    largest, all_, peak = sweep_all(saliency, gt, thresholds)
    return QueryResult(
        row=int(row),
        label=int(label),
        prediction=int(prediction),
        box_iou=0.0 if box is None else best_iou(box, gt),
        pointing=pointing_hit(saliency, gt, tolerance),
        centre_in_box=False if box is None else centre_in_box(box, gt),
        iou_largest=tuple(float(v) for v in largest),
        iou_all=tuple(float(v) for v in all_),
        time_s=float(time_s),
        iou_peak=tuple(float(v) for v in peak),
    )


_SCALARS = ("n", "correct", "gt_known", "top1_loc", "pointing", "centre_in_box")


@dataclass
class LocalizationCounts:
    """Integer counts over queries, from which every rate follows; sums exactly across shards.

    Attributes:
        thresholds: ``T`` thresholds of the sweep.
        n: queries added.
        correct: queries whose top-1 class equals the label.
        gt_known, top1_loc, pointing, centre_in_box: hit counts (see the module docstring).
        hits_largest: ``3 x T`` int64, hits at IoU 0.3/0.5/0.7 x threshold, largest component.
        hits_all: ``3 x T`` int64, the same with all components (MaxBoxAccV2).
        hits_peak: ``T`` int64, hits at IoU 0.5 x threshold, the peak's component.
        time_s: summed seconds (float; the one non-integer field).
        peak_memory_mb: the largest peak memory seen (max, not sum, when merged).
    """

    thresholds: np.ndarray = field(default_factory=lambda: DEFAULT_THRESHOLDS.copy())
    n: int = 0
    correct: int = 0
    gt_known: int = 0
    top1_loc: int = 0
    pointing: int = 0
    centre_in_box: int = 0
    hits_largest: np.ndarray | None = None
    hits_all: np.ndarray | None = None
    hits_peak: np.ndarray | None = None
    time_s: float = 0.0
    peak_memory_mb: float = 0.0

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        shape = (len(IOU_LEVELS), len(self.thresholds))
        if self.hits_largest is None:
            self.hits_largest = np.zeros(shape, dtype=np.int64)
        if self.hits_all is None:
            self.hits_all = np.zeros(shape, dtype=np.int64)
        if self.hits_peak is None:
            self.hits_peak = np.zeros(len(self.thresholds), dtype=np.int64)

    def add(self, result: QueryResult) -> None:
        """Count one query."""
        if len(result.iou_largest) != len(self.thresholds):
            raise ValueError(
                f"result has {len(result.iou_largest)} thresholds, counts have "
                f"{len(self.thresholds)}"
            )
        levels = np.asarray(IOU_LEVELS)[:, None]
        self.n += 1
        correct = result.prediction == result.label
        known = result.box_iou >= 0.5
        self.correct += int(correct)
        self.gt_known += int(known)
        self.top1_loc += int(known and correct)
        self.pointing += int(result.pointing)
        self.centre_in_box += int(result.centre_in_box)
        self.hits_largest += np.asarray(result.iou_largest)[None, :] >= levels
        self.hits_all += np.asarray(result.iou_all)[None, :] >= levels
        if result.iou_peak:
            self.hits_peak += np.asarray(result.iou_peak) >= 0.5
        self.time_s += result.time_s

    def merge(self, other: LocalizationCounts) -> LocalizationCounts:
        """Add another shard's counts into these (in place); returns ``self``."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge counts over different threshold sweeps")
        for name in _SCALARS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.hits_largest = self.hits_largest + other.hits_largest
        self.hits_all = self.hits_all + other.hits_all
        self.hits_peak = self.hits_peak + other.hits_peak
        self.time_s += other.time_s
        self.peak_memory_mb = max(self.peak_memory_mb, other.peak_memory_mb)
        return self

    def to_vector(self) -> np.ndarray:
        """All integer counts as one int64 vector (for ``all_reduce(SUM)``)."""
        scalars = np.array([getattr(self, name) for name in _SCALARS], dtype=np.int64)
        return np.concatenate([scalars, self.hits_largest.ravel(), self.hits_all.ravel(), self.hits_peak])

    def load_vector(self, vector: np.ndarray) -> None:
        """Inverse of :meth:`to_vector` (in place)."""
        v = np.asarray(vector, dtype=np.int64)
        k = len(_SCALARS)
        for i, name in enumerate(_SCALARS):
            setattr(self, name, int(v[i]))
        size = self.hits_largest.size
        self.hits_largest = v[k : k + size].reshape(self.hits_largest.shape).copy()
        self.hits_all = v[k + size : k + 2 * size].reshape(self.hits_all.shape).copy()
        self.hits_peak = v[k + 2 * size :].copy()

    def all_reduce(self) -> None:
        """Sum the counts (and time; max of peak memory) over a ``torch.distributed`` group.

        A no-op unless a process group is initialised. Counts are reduced as int64, so the
        result equals a single-process run exactly.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = torch.from_numpy(self.to_vector()).to(device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self.load_vector(counts.cpu().numpy())
        extra = torch.tensor([self.time_s], dtype=torch.float64, device=device)
        dist.all_reduce(extra, op=dist.ReduceOp.SUM)
        self.time_s = float(extra.item())
        peak = torch.tensor([self.peak_memory_mb], dtype=torch.float64, device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        self.peak_memory_mb = float(peak.item())

    def _rate(self, count: float) -> float:
        return float(count) / self.n if self.n else float("nan")

    def curves(self) -> dict[str, list[float]]:
        """Accuracy against threshold: ``{"largest_30": [T rates], ..., "all_70": [...]}``."""
        out: dict[str, list[float]] = {}
        for j, level in enumerate(IOU_LEVELS):
            tag = f"{round(level * 100)}"
            out[f"largest_{tag}"] = [self._rate(c) for c in self.hits_largest[j]]
            out[f"all_{tag}"] = [self._rate(c) for c in self.hits_all[j]]
        out["peak_50"] = [self._rate(c) for c in self.hits_peak]
        return out

    def summary(self) -> dict[str, Any]:
        """Every rate (fractions in ``[0, 1]``) plus the best thresholds.

        Keys: ``n``, ``top1_acc``, ``maxboxacc_30/50/70`` (largest component),
        ``maxboxacc_v2`` (mean over the three all-component MaxBoxAccs), ``maxboxacc_all_30/50/70``,
        ``best_threshold_30/50/70`` and ``best_threshold_all_30/50/70`` (the lowest threshold
        reaching the maximum), ``boxacc_peak_50`` and ``best_threshold_peak_50`` (the peak's
        component box, IoU 0.5), ``gt_known_loc``, ``top1_loc``, ``pointing``, ``centre_in_box``,
        ``sec_per_image``, ``peak_memory_mb``.
        """
        out: dict[str, Any] = {"n": self.n, "top1_acc": self._rate(self.correct)}
        v2 = []
        for j, level in enumerate(IOU_LEVELS):
            tag = f"{round(level * 100)}"
            i = int(np.argmax(self.hits_largest[j]))
            out[f"maxboxacc_{tag}"] = self._rate(self.hits_largest[j, i])
            out[f"best_threshold_{tag}"] = float(self.thresholds[i])
            i = int(np.argmax(self.hits_all[j]))
            out[f"maxboxacc_all_{tag}"] = self._rate(self.hits_all[j, i])
            out[f"best_threshold_all_{tag}"] = float(self.thresholds[i])
            v2.append(out[f"maxboxacc_all_{tag}"])
        out["maxboxacc_v2"] = float(np.mean(v2))
        i = int(np.argmax(self.hits_peak))
        out["boxacc_peak_50"] = self._rate(self.hits_peak[i])
        out["best_threshold_peak_50"] = float(self.thresholds[i])
        out["gt_known_loc"] = self._rate(self.gt_known)
        out["top1_loc"] = self._rate(self.top1_loc)
        out["pointing"] = self._rate(self.pointing)
        out["centre_in_box"] = self._rate(self.centre_in_box)
        out["sec_per_image"] = self.time_s / self.n if self.n else float("nan")
        out["peak_memory_mb"] = self.peak_memory_mb
        return out
