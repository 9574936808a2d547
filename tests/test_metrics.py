"""Metrics on hand-made maps and boxes whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from fastloc_viz.evaluation import metrics
from fastloc_viz.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    LocalizationCounts,
    QueryResult,
    centre_in_box,
    iou,
    iou_matrix,
    pointing_hit,
    score_query,
    sweep_all,
    sweep_ious,
)


# --------------------------------------------------------------------------- IoU
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),  # one shared pixel of 4 + 4 - 1
        ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),  # containment
        ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
        ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),  # touching edges share no area
        ((0, 0, 2, 2), (5, 5, 6, 6), 0.0),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty union
        ((0.5, 0.0, 2.5, 1.0), (1.5, 0.0, 3.5, 1.0), 1 / 3),  # float boxes
    ],
)
def test_iou_known_values(a, b, expected):
    assert iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert iou(b, a) == pytest.approx(expected, abs=1e-12)


def test_iou_matrix_shape_and_values():
    m = iou_matrix([(0, 0, 2, 2), (0, 0, 4, 4)], [(0, 0, 2, 2), (1, 1, 3, 3), (9, 9, 10, 10)])
    np.testing.assert_allclose(m, [[1.0, 1 / 7, 0.0], [4 / 16, 4 / 16, 0.0]])


def test_iou_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"n x 4.*\(3,\)"):
        iou((0, 0, 1), (0, 0, 1, 1))


# --------------------------------------------------------------- threshold sweep
def _tiered_map() -> np.ndarray:
    """0.2 everywhere, 0.5 on [20, 80)^2, 1.0 on [40, 60)^2 (100 x 100)."""
    m = np.full((100, 100), 0.2, dtype=np.float32)
    m[20:80, 20:80] = 0.5
    m[40:60, 40:60] = 1.0
    return m


def test_sweep_on_tiered_map_has_known_ious():
    largest, all_ = sweep_ious(_tiered_map(), [(20, 20, 80, 80)])
    t = DEFAULT_THRESHOLDS
    # t <= 0.20: the whole image; 0.20 < t <= 0.50: the ground-truth box; above: the core.
    np.testing.assert_allclose(largest[t <= 0.2], 3600 / 10000)
    np.testing.assert_allclose(largest[(t > 0.2) & (t <= 0.5)], 1.0)
    np.testing.assert_allclose(largest[t > 0.5], 400 / 3600)
    np.testing.assert_array_equal(largest, all_)  # one component at every threshold


def test_maxboxacc_best_threshold_is_known():
    counts = LocalizationCounts()
    counts.add(
        score_query(_tiered_map(), (40, 40, 60, 60), [(20, 20, 80, 80)], row=0, label=1, prediction=1)
    )
    s = counts.summary()
    assert s["maxboxacc_50"] == 1.0
    assert s["best_threshold_50"] == 0.21  # the lowest threshold that reaches the maximum
    assert s["maxboxacc_70"] == 1.0
    assert counts.hits_largest[1].sum() == 30  # thresholds 0.21 ... 0.50
    assert counts.hits_largest[0].sum() == 51  # IoU 0.36 >= 0.3 too: thresholds 0.00 ... 0.50
    # the method's own box (the core) has IoU 1/9 < 0.5: not GT-known, but centred in the box
    assert s["gt_known_loc"] == 0.0 and s["top1_loc"] == 0.0
    assert s["centre_in_box"] == 1.0 and s["pointing"] == 1.0


def test_maxboxacc_over_two_images_picks_one_shared_threshold():
    a = _tiered_map()  # hit on thresholds 0.21 .. 0.50
    b = np.zeros((100, 100), dtype=np.float32)
    b[10:90, 10:90] = 0.6  # the ground-truth box as long as t <= 0.60
    b[45:55, 45:55] = 1.0
    counts = LocalizationCounts()
    for i, m in enumerate((a, b)):
        counts.add(score_query(m, (0, 0, 1, 1), [(20, 20, 80, 80)] if i == 0 else [(10, 10, 90, 90)],
                               row=i, label=0, prediction=0))
    s = counts.summary()
    assert s["maxboxacc_50"] == 1.0 and s["best_threshold_50"] == 0.21
    curve = counts.curves()["largest_50"]
    assert curve[20] == 0.5 and curve[21] == 1.0 and curve[50] == 1.0 and curve[51] == 0.5
    assert curve[61] == 0.0


def test_all_components_find_the_small_object_the_largest_misses():
    m = np.zeros((100, 100), dtype=np.float32)
    m[0:50, 0:50] = 1.0  # big distractor
    m[70:80, 70:80] = 1.0  # the object, a separate component
    gt = [(70, 70, 80, 80)]
    largest, all_ = sweep_ious(m, gt)
    # t = 0: whole image (IoU 0.01) for both; t > 0: two components
    assert largest[0] == all_[0] == pytest.approx(100 / 10000)
    np.testing.assert_allclose(largest[1:], 0.0)
    np.testing.assert_allclose(all_[1:], 1.0)
    counts = LocalizationCounts()
    counts.add(score_query(m, (0, 0, 50, 50), gt, row=0, label=3, prediction=3))
    s = counts.summary()
    assert s["maxboxacc_50"] == 0.0
    assert s["maxboxacc_all_30"] == s["maxboxacc_all_50"] == s["maxboxacc_all_70"] == 1.0
    assert s["maxboxacc_v2"] == 1.0
    assert s["best_threshold_all_50"] == 0.01


def test_diagonal_components_are_connected():
    m = np.zeros((10, 10), dtype=np.float32)
    m[2, 2] = m[3, 3] = m[4, 4] = 1.0  # 8-connected chain
    largest, _ = sweep_ious(m, [(2, 2, 5, 5)], thresholds=[0.5])
    assert largest[0] == 1.0


def test_all_zero_map_has_no_box_and_misses_everything():
    """An all-zero map is no box (not the whole image, which would score IoU 0.5 here)."""
    largest, all_, peak = sweep_all(np.zeros((10, 20)), [(0, 0, 20, 5)], thresholds=[0.0, 0.5])
    assert largest.tolist() == all_.tolist() == peak.tolist() == [0.0, 0.0]
    r = score_query(np.zeros((10, 20)), None, [(0, 0, 20, 5)], row=0, label=1, prediction=1, thresholds=[0.0])
    assert r.box_iou == 0.0 and not r.centre_in_box and not r.pointing


def test_peak_sweep_follows_the_peak_not_the_largest_component():
    """Two blobs: a big dim one (largest) and a small bright one (the peak). MaxBoxAcc boxes
    the big one, the peak sweep the bright one, until the threshold drops both into one."""
    m = np.zeros((40, 40), dtype=np.float32)
    m[2:22, 2:22] = 0.5  # 400 px, on the wrong object
    m[30:36, 30:36] = 1.0  # 36 px: the peak, the queried object
    gt = [(30, 30, 36, 36)]
    largest, all_, peak = sweep_all(m, gt, thresholds=[0.0, 0.4, 0.6])
    assert peak.tolist() == [36 / 1600, 1.0, 1.0]  # at t = 0 the mask is the whole map
    assert largest.tolist() == [36 / 1600, 0.0, 1.0]
    assert all_.tolist() == [36 / 1600, 1.0, 1.0]
    counts = LocalizationCounts(thresholds=np.array([0.0, 0.4, 0.6]))
    counts.add(score_query(m, (30, 30, 36, 36), gt, row=0, label=1, prediction=1, thresholds=[0.0, 0.4, 0.6]))
    assert counts.curves()["peak_50"] == [0.0, 1.0, 1.0]
    s = counts.summary()
    assert s["boxacc_peak_50"] == 1.0 and s["best_threshold_peak_50"] == 0.4
    again = LocalizationCounts(thresholds=np.array([0.0, 0.4, 0.6]))
    again.load_vector(counts.to_vector())
    assert again.hits_peak.tolist() == [0, 1, 1]


# -------------------------------------------------------------- multi-box images
def test_multi_box_image_scores_against_the_best_matching_box():
    m = np.zeros((100, 100), dtype=np.float32)
    m[60:90, 10:40] = 1.0
    gt = [(50, 50, 90, 90), (10, 60, 40, 90)]  # the map matches the second box exactly
    r = score_query(m, (10, 60, 40, 90), gt, row=0, label=5, prediction=5, thresholds=[0.5])
    assert r.box_iou == 1.0
    assert r.iou_largest == (1.0,)
    assert r.pointing and r.centre_in_box
    r1 = score_query(m, (10, 60, 40, 90), gt[:1], row=0, label=5, prediction=5, thresholds=[0.5])
    assert r1.box_iou == 0.0 and not r1.centre_in_box


# ----------------------------------------------------------------- pointing game
def _peak_map(x: int, y: int) -> np.ndarray:
    m = np.zeros((100, 100), dtype=np.float32)
    m[y, x] = 1.0
    return m


@pytest.mark.parametrize(
    ("box", "hit"),
    [
        ((30.0, 0.0, 54.5, 30.0), True),  # peak centre (69.5, 10.5) is exactly 15 px right
        ((30.0, 0.0, 54.4, 30.0), False),  # 15.1 px
        ((30.0, 22.5, 60.5, 40.0), True),  # dx = 9, dy = 12: exactly 15 (3-4-5 triangle)
        ((30.0, 22.6, 60.5, 40.0), False),  # dy = 12.1: just over
        ((69.0, 10.0, 70.0, 11.0), True),  # inside
    ],
)
def test_pointing_game_tolerance_edge(box, hit):
    assert pointing_hit(_peak_map(69, 10), [box]) is hit


def test_pointing_tolerance_is_a_parameter_and_all_zero_maps_miss():
    assert not pointing_hit(_peak_map(69, 10), [(30.0, 0.0, 54.5, 30.0)], tolerance=14.99)
    assert not pointing_hit(np.zeros((10, 10)), [(0, 0, 10, 10)])
    assert metrics.map_peak(np.zeros((3, 3))) is None


def test_pointing_takes_the_first_maximum_in_raster_order():
    m = np.zeros((100, 100), dtype=np.float32)
    m[5, 90] = 1.0  # first in raster order
    m[90, 5] = 1.0
    assert metrics.map_peak(m) == (90.5, 5.5)
    assert pointing_hit(m, [(80, 0, 100, 20)])
    assert not pointing_hit(m, [(0, 80, 20, 100)])


def test_centre_in_box_includes_edges():
    assert centre_in_box((0, 0, 20, 20), [(10, 10, 30, 30)])  # centre (10, 10) on the corner
    assert not centre_in_box((0, 0, 20, 19.8), [(10, 10, 30, 30)])  # centre y = 9.9


# ------------------------------------------------ label differs from prediction
def test_label_differing_from_prediction_counts_gt_known_not_top1():
    m = np.zeros((50, 50), dtype=np.float32)
    m[10:20, 10:20] = 1.0
    gt = [(10, 10, 20, 20)]
    counts = LocalizationCounts()
    counts.add(score_query(m, (10, 10, 20, 20), gt, row=0, label=7, prediction=8))
    counts.add(score_query(m, (10, 10, 20, 20), gt, row=1, label=7, prediction=7))
    counts.add(score_query(m, (30, 30, 40, 40), gt, row=2, label=7, prediction=7))
    s = counts.summary()
    assert s["n"] == 3
    assert s["top1_acc"] == pytest.approx(2 / 3)
    assert s["gt_known_loc"] == pytest.approx(2 / 3)
    assert s["top1_loc"] == pytest.approx(1 / 3)
    # MaxBoxAcc is GT-known (the map, not the prediction, decides): all three maps match
    assert s["maxboxacc_50"] == 1.0


# ------------------------------------------------------------------ accumulator
def _random_results(n: int, seed: int) -> list[QueryResult]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = np.zeros((40, 40), dtype=np.float32)
        x, y = rng.integers(0, 30, size=2)
        m[y : y + 10, x : x + 10] = rng.random((10, 10))
        out.append(
            score_query(m, (x, y, x + 8, y + 8), [(10, 10, 25, 25)], row=i,
                        label=int(rng.integers(0, 3)), prediction=int(rng.integers(0, 3)),
                        time_s=0.25)
        )
    return out


def test_counts_merge_equals_sequential_and_round_trip():
    results = _random_results(12, seed=0)
    whole = LocalizationCounts()
    for r in results:
        whole.add(r)
    a, b = LocalizationCounts(), LocalizationCounts()
    for r in results[::2]:
        a.add(QueryResult.from_dict(r.to_dict()))
    for r in results[1::2]:
        b.add(r)
    b.peak_memory_mb = 7.0
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.to_vector(), whole.to_vector())
    assert merged.time_s == pytest.approx(3.0)
    assert merged.peak_memory_mb == 7.0
    s1, s2 = merged.summary(), whole.summary()
    assert {k: v for k, v in s1.items() if k != "peak_memory_mb"} == {
        k: v for k, v in s2.items() if k != "peak_memory_mb"
    }
    c = LocalizationCounts()
    c.load_vector(whole.to_vector())
    np.testing.assert_array_equal(c.hits_all, whole.hits_all)
    assert c.n == 12


def test_counts_reject_mismatched_sweeps():
    r = score_query(np.ones((4, 4)), (0, 0, 4, 4), [(0, 0, 4, 4)], row=0, label=0, prediction=0,
                    thresholds=[0.5])
    with pytest.raises(ValueError, match="1 thresholds, counts have 100"):
        LocalizationCounts().add(r)
    with pytest.raises(ValueError, match="different threshold sweeps"):
        LocalizationCounts().merge(LocalizationCounts(thresholds=[0.5]))


def test_all_reduce_without_process_group_is_a_no_op():
    counts = LocalizationCounts()
    for r in _random_results(3, seed=1):
        counts.add(r)
    before = counts.to_vector().copy()
    counts.all_reduce()
    np.testing.assert_array_equal(counts.to_vector(), before)


def test_empty_counts_give_nan_rates():
    s = LocalizationCounts().summary()
    assert s["n"] == 0 and np.isnan(s["maxboxacc_50"])
