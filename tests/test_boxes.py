"""Property tests (hypothesis) for map -> box conversion and IoU."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fastloc_viz.maps import boxes_at_thresholds, map_to_box, normalize
from fastloc_viz.metrics import component_boxes, iou, iou_matrix, sweep_ious

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
@given(maps, thresholds, st.sampled_from(["largest", "all"]))
def test_box_lies_inside_the_image_and_is_not_empty(m, t, components):
    assert _inside(map_to_box(m, t, components), m.shape)


@settings(max_examples=200, deadline=None)
@given(maps, thresholds)
def test_box_covers_the_peak(m, t):
    if m.max() <= 0:
        return
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    x0, y0, x1, y1 = map_to_box(m, t, "all")
    assert x0 <= x < x1 and y0 <= y < y1


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
    a = map_to_box(m, lo, "all")
    b = map_to_box(m, hi, "all")
    assert a[0] <= b[0] and a[1] <= b[1] and b[2] <= a[2] and b[3] <= a[3]


@settings(max_examples=150, deadline=None)
@given(maps, thresholds, thresholds)
def test_higher_threshold_keeps_fewer_pixels(m, t1, t2):
    lo, hi = sorted((t1, t2))
    top = m.max()
    assert np.count_nonzero(m >= hi * top) <= np.count_nonzero(m >= lo * top)


@settings(max_examples=100, deadline=None)
@given(maps, st.lists(thresholds, min_size=1, max_size=5), st.sampled_from(["largest", "all"]))
def test_boxes_at_thresholds_matches_map_to_box(m, ts, components):
    assert boxes_at_thresholds(m, ts, components) == [map_to_box(m, t, components) for t in ts]


@settings(max_examples=150, deadline=None)
@given(maps, boxes(size=24), st.lists(thresholds, min_size=1, max_size=6))
def test_sweep_largest_agrees_with_map_to_box(m, gt, ts):
    """The fast sweep of the metrics gives the IoU of exactly the box ``map_to_box`` makes."""
    ts = sorted(ts)
    largest, all_ = sweep_ious(m, [gt], ts)
    for i, t in enumerate(ts):
        assert largest[i] == iou(map_to_box(m, t, "largest"), gt)
        assert largest[i] <= all_[i] <= 1.0


@settings(max_examples=150, deadline=None)
@given(maps, thresholds)
def test_component_boxes_cover_the_mask_and_the_union_box(m, t):
    mask = m >= t * m.max()
    b, sizes = component_boxes(mask)
    assert sizes.sum() == mask.sum()
    if len(b):
        union = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
        assert union == map_to_box(m, t, "all") or m.max() <= 0
        assert (iou_matrix(b, b).diagonal() > 0).all()


@settings(max_examples=100, deadline=None)
@given(maps)
def test_normalize_scales_to_unit_maximum(m):
    n = normalize(m)
    assert n.min() >= 0
    assert n.max() == (1.0 if m.max() > 0 else 0.0)
