"""Score-CAM (Wang et al. 2020): each channel's weight is how much the input masked by it
raises the class's logit; no gradient."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import cams
from ..model.bundle import as_logits
from .base import register_method
from .cam_family import CAMParams, LayerMapMethod


@register_method
class ScoreCAM(LayerMapMethod):
    """One masked forward per channel (320 at EfficientNet-Lite0's default layer), run
    ``batch_size`` at a time; the weights are the softmax over channels of the logit gains,
    as torch-cam computes them (:func:`fastloc_viz.engine.cams.score_cam`)."""

    name = "scorecam"
    label = "Score-CAM"

    @dataclass(frozen=True)
    class Params(CAMParams):
        threshold: float = 0.46  # chosen for the default box on a development split: 40 images + 24 collage queries (docs/results.md)

    def layer_map(self, ctx, x, targets, params):
        name, module = ctx.layer
        return cams.score_cam(ctx.model, x, module, targets, as_logits, name, ctx.batch_size)
