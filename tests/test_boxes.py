"""Property tests (hypothesis) for map -> box conversion and IoU."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fastloc_viz.core.maps import boxes_at_thresholds, map_to_box, normalize, scored_boxes, threshold_mask
from fastloc_viz.evaluation.metrics import component_boxes, iou, iou_matrix, sweep_all, sweep_ious

maps = arrays(
    np.float32,
    st.tuples(st.integers(1, 24), st.integers(1, 24)),
    elements=st.floats(0, 1, width=32),
)
thresholds = st.floats(0, 1)


@st.composite
def boxes(draw, size: int = 50):
    x0 = draw(st.floats(0, size))
    y0 = draw(st.floats(0, size))
    x1 = draw(st.floats(x0, size))
    y1 = draw(st.floats(y0, size))
    return (x0, y0, x1, y1)


def _inside(box, shape) -> bool:
    h, w = shape
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@settings(max_examples=200, deadline=None)
@given(maps, thresholds, st.sampled_from(["peak", "largest", "all", "merged"]))
def test_box_lies_inside_the_image_and_is_not_empty_unless_the_map_is_zero(m, t, components):
    box = map_to_box(m, t, components)
    assert (box is None) == (m.max() <= 0)
    if box is not None:
        assert _inside(box, m.shape)


@settings(max_examples=200, deadline=None)
@given(maps, thresholds, st.sampled_from(["peak", "all", "merged"]))
def test_box_covers_the_peak(m, t, components):
    if m.max() <= 0:
        return
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    x0, y0, x1, y1 = map_to_box(m, t, components)
    assert x0 <= x < x1 and y0 <= y < y1


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The 8-connected components of a mask by plain flood fill, in raster order of each
    component's first pixel: the oracle the box code is checked against (no scipy)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            seen[y0, x0] = True
            todo, comp = [(y0, x0)], []
            while todo:
                y, x = todo.pop()
                comp.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                            seen[v, u] = True
                            todo.append((v, u))
            out.append(comp)
    return out


def _extent(pixels) -> tuple[int, int, int, int]:
    ys, xs = zip(*pixels)
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


def _oracle_box(m: np.ndarray, t: float, components: str):
    """The box by definition: the pixels at or above ``t * max``; ``"merged"`` all of them,
    ``"largest"`` the biggest component (the first on a tie), ``"peak"`` the one holding the
    first maximum in raster order."""
    top = float(m.max())
    if top <= 0:
        return None
    mask = m >= t * top
    comps = _components(mask)
    if components == "merged":
        return _extent([p for c in comps for p in c])
    if components == "largest":
        return _extent(max(comps, key=len))  # max keeps the first of equal sizes
    at = np.unravel_index(int(np.argmax(m)), m.shape)
    return _extent(next(c for c in comps if at in c))


@settings(max_examples=200, deadline=None)
@given(maps, thresholds)
def test_scored_boxes_are_the_components_best_first(m, t):
    top = float(m.max())
    comps = _components(m >= t * top) if top > 0 else []
    # the score in the map's own precision (float32), as a fraction of its maximum
    expected = [(_extent(c), round(float(max(m[p] for p in c) / m.max()), 6)) for c in comps]
    expected.sort(key=lambda bs: -bs[1])  # stable: raster order among equal scores
    assert scored_boxes(m, t) == expected


def test_threshold_mask_keeps_the_pixels_at_or_above_the_fraction():
    m = np.array([[0.0, 0.2, 0.5], [0.6, 1.0, 0.49]], dtype=np.float32) * 4
    assert threshold_mask(m, 0.5).tolist() == [[False, False, True], [True, True, False]]
    assert threshold_mask(m, 0.0).all()  # a threshold of 0 keeps every pixel, zeros too
    assert threshold_mask(m, 1.0).tolist() == [[False, False, False], [False, True, False]]
    assert not threshold_mask(np.zeros((2, 3), np.float32), 0.0).any()  # an all-zero map: none


@settings(max_examples=200, deadline=None)
@given(boxes(), boxes())
def test_iou_is_symmetric_and_a_fraction(a, b):
    v = iou(a, b)
    assert 0.0 <= v <= 1.0
    assert v == iou(b, a)


@settings(max_examples=100, deadline=None)
@given(boxes())
def test_iou_of_a_box_with_itself_is_one_unless_empty(a):
    area = (a[2] - a[0]) * (a[3] - a[1])
    assert iou(a, a) == (1.0 if area > 0 else 0.0)


@settings(max_examples=150, deadline=None)
@given(maps, thresholds, thresholds)
def test_higher_threshold_gives_a_nested_box_with_all_components(m, t1, t2):
    lo, hi = sorted((t1, t2))
    a = map_to_box(m, lo, "merged")
    b = map_to_box(m, hi, "merged")
    if m.max() <= 0:
        assert a is None and b is None
        return
    assert a[0] <= b[0] and a[1] <= b[1] and b[2] <= a[2] and b[3] <= a[3]


@settings(max_examples=150, deadline=None)
@given(maps, thresholds, thresholds)
def test_higher_threshold_keeps_fewer_pixels(m, t1, t2):
    lo, hi = sorted((t1, t2))
    a, b = threshold_mask(m, lo), threshold_mask(m, hi)
    assert not (b & ~a).any()  # nested
    assert b.sum() <= a.sum() and (b.any() == (m.max() > 0))  # the peak always stays


@settings(max_examples=200, deadline=None)
@given(maps, thresholds, st.sampled_from(["peak", "largest", "merged"]))
def test_map_to_box_is_the_box_of_its_definition(m, t, components):
    assert map_to_box(m, t, components) == _oracle_box(m, t, components)


@settings(max_examples=100, deadline=None)
@given(maps, st.lists(thresholds, min_size=1, max_size=5), st.sampled_from(["peak", "largest", "merged"]))
def test_boxes_at_thresholds_are_the_boxes_of_their_definition(m, ts, components):
    assert boxes_at_thresholds(m, ts, components) == [_oracle_box(m, t, components) for t in ts]


@settings(max_examples=150, deadline=None)
@given(maps, boxes(size=24), st.lists(thresholds, min_size=1, max_size=6))
def test_sweep_largest_agrees_with_map_to_box(m, gt, ts):
    """The fast sweep of the metrics gives the IoU of exactly the box ``map_to_box`` makes."""
    ts = sorted(ts)
    largest, all_, peak = sweep_all(m, [gt], ts)
    assert np.array_equal(sweep_ious(m, [gt], ts)[0], largest)
    for i, t in enumerate(ts):
        box = map_to_box(m, t, "largest")
        assert largest[i] == (0.0 if box is None else iou(box, gt))
        box = map_to_box(m, t, "peak")
        assert peak[i] == (0.0 if box is None else iou(box, gt))
        assert max(largest[i], peak[i]) <= all_[i] <= 1.0
        assert all_[i] == max((iou(b, gt) for b, _ in scored_boxes(m, t)), default=0.0)


@settings(max_examples=150, deadline=None)
@given(maps, thresholds)
def test_component_boxes_cover_the_mask_and_the_union_box(m, t):
    mask = m >= t * m.max()
    b, sizes = component_boxes(mask)
    assert sizes.sum() == mask.sum()
    if len(b):
        union = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
        assert union == map_to_box(m, t, "merged") or m.max() <= 0
        assert (iou_matrix(b, b).diagonal() > 0).all()


@settings(max_examples=100, deadline=None)
@given(maps)
def test_normalize_scales_to_unit_maximum(m):
    n = normalize(m)
    assert n.min() >= 0
    assert n.max() == (1.0 if m.max() > 0 else 0.0)
