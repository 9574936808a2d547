"""Property tests (hypothesis) for map -> box conversion and IoU."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fastloc_viz.core.maps import boxes_at_thresholds, map_to_box, normalize, scored_boxes
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


@settings(max_examples=200, deadline=None)
@given(maps, thresholds)
def test_scored_boxes_are_the_components_best_first(m, t):
    scored = scored_boxes(m, t)
    boxes, _ = component_boxes(m >= t * m.max() if m.max() > 0 else np.zeros(m.shape, bool))
    assert sorted(b for b, _ in scored) == sorted(tuple(int(v) for v in b) for b in boxes)
    scores = [sc for _, sc in scored]
    assert scores == sorted(scores, reverse=True)
    if scored:
        assert scores[0] == 1.0 and scored[0][0] == map_to_box(m, t, "peak")
        assert all(t - 1e-6 <= sc <= 1.0 for sc in scores)


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
    top = m.max()
    assert np.count_nonzero(m >= hi * top) <= np.count_nonzero(m >= lo * top)


@settings(max_examples=100, deadline=None)
@given(maps, st.lists(thresholds, min_size=1, max_size=5), st.sampled_from(["peak", "largest", "merged"]))
def test_boxes_at_thresholds_matches_map_to_box(m, ts, components):
    assert boxes_at_thresholds(m, ts, components) == [map_to_box(m, t, components) for t in ts]


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
