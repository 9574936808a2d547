"""Boxes in the photo's own pixels (issue 12): ``Explanation.original_size`` and ``box_original``.

The shared images are stored at 227 x 227, stretched from originals of ``orig_width x
orig_height``. A true non-square photo is rebuilt by resizing a stored image back to its
original size (in ``tmp_path``), with its ground-truth boxes scaled by ``orig / 227``.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastloc_viz.core.raster import to_uint8
from fastloc_viz.core.results import box_to_original
from fastloc_viz.evaluation.metrics import iou


def test_mapping_arithmetic_on_a_hand_set_case():
    # grid 224 x 224, photo 6000 x 4000: x scales by 6000/224, y by 4000/224
    assert box_to_original((0, 0, 224, 224), (224, 224), (6000, 4000)) == (0, 0, 6000, 4000)
    # x0 = 56 * 6000 / 224 = 1500 exactly; x1 = 113 * 6000/224 = 3026.78 -> 3027 (outward)
    # y0 = 10 * 4000 / 224 = 178.57 -> 178; y1 = 200 * 4000 / 224 = 3571.43 -> 3572
    assert box_to_original((56, 10, 113, 200), (224, 224), (6000, 4000)) == (1500, 178, 3027, 3572)
    # the same size: unchanged; a non-square grid (H=100, W=200) scales each axis by its own side
    assert box_to_original((3, 4, 50, 60), (224, 224), (224, 224)) == (3, 4, 50, 60)
    assert box_to_original((20, 10, 40, 30), (100, 200), (100, 300)) == (10, 30, 20, 90)
    # an exact multiple never rounds up by floating error
    assert box_to_original((7, 7, 21, 21), (224, 224), (2240, 2240)) == (70, 70, 210, 210)


def test_arrays_keep_their_own_size_and_json_has_both_boxes(tiny_bundle_224):
    import fastloc_viz as fv

    img = np.random.default_rng(0).random((90, 300, 3)).astype(np.float32)
    e = fv.explain(tiny_bundle_224, img, method="gradcam")
    assert e.original_size == (300, 90)
    assert e.box_original == box_to_original(e.box, e.input_size, (300, 90))
    d = e.to_dict()
    assert d["original_size"] == [300, 90] and d["box_original"] == list(e.box_original)
    batch = fv.explain(tiny_bundle_224, [img, img[:50, :60]], method="gradcam")
    assert [b.original_size for b in batch] == [(300, 90), (60, 50)]


@pytest.fixture(scope="module")
def tiny_bundle_224():
    import torch
    from torch import nn

    from fastloc_viz.model.bundle import ModelBundle

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    return ModelBundle(model=model, class_names=["a", "b", "c"], input_size=(64, 64))


@pytest.mark.slow
def test_non_square_photos_map_back_onto_their_ground_truth(lite0, shared_data, tmp_path):
    import fastloc_viz as fv
    from fastloc_viz.imaging.dataset import LocalizationDataset

    rows = [q for q in LocalizationDataset(shared_data, limit=60)
            if abs(q.orig_width / q.orig_height - 1) > 0.2 and len(q.boxes) == 1][:8]
    assert len(rows) == 8
    paths, gts = [], []
    for q in rows:
        photo = Image.fromarray(to_uint8(q.load_image().pixels)).resize((q.orig_width, q.orig_height), Image.BICUBIC)
        path = tmp_path / f"{q.image.stem}.png"
        photo.save(path)
        paths.append(path)
        sx, sy = q.orig_width / q.width, q.orig_height / q.height
        gts.append(q.boxes[0] * [sx, sy, sx, sy])
    results = fv.explain(lite0, paths, method="gradcam", target=[q.label for q in rows])
    hits = 0
    for q, e, gt in zip(rows, results, gts):
        assert e.original_size == (q.orig_width, q.orig_height)
        x0, y0, x1, y1 = e.box_original
        assert 0 <= x0 < x1 <= q.orig_width and 0 <= y0 < y1 <= q.orig_height
        grid_iou = iou(e.box, q.boxes_at(e.input_size)[0])
        photo_iou = iou(e.box_original, gt)
        # the mapping is the stretch itself: the IoU in the photo is the IoU on the grid,
        # up to the outward rounding of at most one photo pixel per edge
        assert photo_iou == pytest.approx(grid_iou, abs=0.03)
        if grid_iou >= 0.5:
            hits += 1
            assert photo_iou >= 0.5 - 0.03
    assert hits >= 4, f"only {hits} of 8 grid boxes hit the ground truth"
