"""Our deletion curve and randomization check against Quantus 0.6 on EfficientNet-Lite0.

Quantus (``pip install quantus==0.6.0``, in the ``dev`` extra) works on the *normalized* input,
so the two are set up to compute the same thing:

* PixelFlipping: Quantus's ``perturb_baseline=0.0`` in normalized space is the normalization's
  mean colour, our ``baseline="mean"``; Quantus orders features with an unstable ``argsort``
  and broadcasts a 1-channel map over the 3 channels, so the map handed to both is each
  pixel's rank (distinct integers, no ties, exact in float32). Quantus requires
  ``features_in_step`` to divide H x W, but then steps through the H x W x 3 *channel values*
  (a pixel's 3 values are adjacent in its order, as they tie): with ``features_in_step =
  H W / 16`` it takes 48 steps, and its every third point (3 x H W / 16 values = H W / 16
  whole pixels) is one of our 16 steps. Quantus does not report the unchanged image, so those
  points are our ``probs[1:]``. Tolerance: 1e-4 in probability (batch sizes differ, so
  float32 sums differ in the last bits).
* MPRT: our ``level="modules"`` is Quantus's layer list (every module with
  ``reset_parameters``, reverse registration order, cascading) and we seed as it does
  (``torch.manual_seed(seed + 1)`` before each reset), so the randomized models are the same
  and the maps identical. Quantus's explain_func receives normalized inputs; ours maps them
  back to ``[0, 1]`` and calls ``explain`` with the same probe layer. Tolerance: 1e-6 in
  Spearman correlation.

No workaround was needed for torch 2.14 / numpy 2.4: quantus 0.6.0 imports and runs as is
(it pulls in scikit-learn, pandas, opencv-python and cachetools).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require

import fastloc_viz as fv
from fastloc_viz.evaluation.faithfulness import faithfulness, pixel_order
from fastloc_viz.evaluation.sanity import sanity_check

quantus = require("quantus", minversion="0.6")
pytestmark = pytest.mark.slow


def _normalized(bundle, image) -> np.ndarray:
    from fastloc_viz.imaging.batch import load_batch

    return bundle.preprocess(load_batch(image, bundle.input_size)).detach().numpy().astype(np.float32)


def test_deletion_matches_quantus_pixel_flipping(lite0, shared_data):
    from fastloc_viz.imaging.dataset import LocalizationDataset

    q = LocalizationDataset(shared_data, limit=1)[0]
    image = q.load_image()
    e = fv.explain(lite0, image, method="gradcam", target=q.label)
    h, w = lite0.input_size
    rank = np.empty(h * w)
    rank[pixel_order(e.saliency)] = np.arange(h * w)
    tie_free = (h * w - 1 - rank).reshape(h, w)  # the same order as e.saliency, no ties
    steps = 16
    ours = faithfulness(lite0, image, tie_free, target=q.label, steps=steps, kinds=("deletion",))["deletion"]
    metric = quantus.PixelFlipping(
        features_in_step=h * w // steps, perturb_baseline=0.0, abs=False, normalise=False,
        disable_warnings=True, display_progressbar=False,
    )
    theirs = metric(
        model=lite0.model, x_batch=_normalized(lite0, image), y_batch=np.array([q.label]),
        a_batch=np.repeat(tie_free[None, None], 3, axis=1).astype(np.float32), channel_first=True, softmax=True, device="cpu",
    )
    theirs = np.asarray(theirs[0], dtype=np.float64)
    assert theirs.shape == (3 * steps,)
    print(f"PixelFlipping: max |ours - quantus| = {np.abs(ours.probs[1:] - theirs[2::3]).max():.2e}")
    np.testing.assert_allclose(ours.probs[1:], theirs[2::3], rtol=0, atol=1e-4)


def test_randomization_matches_quantus_mprt(lite0, shared_data):
    from fastloc_viz.imaging.dataset import LocalizationDataset

    q = LocalizationDataset(shared_data, limit=1)[0]
    image = q.load_image()
    layer = "_blocks.15"

    def explain_func(model, inputs, targets, **kwargs):
        bundle = fv.ModelBundle(model, class_names=lite0.class_names, input_size=lite0.input_size,
                                mean=lite0.mean, std=lite0.std, default_layer=layer)
        x = torch.as_tensor(np.asarray(inputs)) * torch.tensor(lite0.std)[:, None, None] \
            + torch.tensor(lite0.mean)[:, None, None]
        exps = fv.explain(bundle, x.float(), method=kwargs["method"], target=[int(t) for t in targets],
                          layer=layer)
        return np.stack([ex.saliency for ex in exps])[:, None]

    metric = quantus.MPRT(layer_order="top_down", seed=42, return_average_correlation=False,
                          disable_warnings=True, display_progressbar=False)
    theirs = metric(
        model=lite0.model, x_batch=_normalized(lite0, image), y_batch=np.array([q.label]), a_batch=None,
        explain_func=explain_func, explain_func_kwargs={"method": "guided_backprop"}, device="cpu",
    )
    assert theirs.pop("original")[0] == pytest.approx(1.0)  # Quantus's map against itself
    names = list(theirs)
    curve = np.array([theirs[n][0] for n in names], dtype=np.float64)
    depths = [1, 2, 10, 40, len(names)]
    ours = sanity_check(lite0, image, methods=["guided_backprop"], target=q.label, layer=layer,
                        level="modules", depths=depths)["guided_backprop"]
    assert ours.n_groups == len(names)
    assert list(ours.groups) == [names[d - 1] for d in depths]
    print(f"MPRT: max |ours - quantus| = {np.abs(ours.spearman - curve[np.array(depths) - 1]).max():.2e}",
          "ours", ours.spearman.round(4))
    np.testing.assert_allclose(ours.spearman, curve[np.array(depths) - 1], rtol=0, atol=1e-6)
