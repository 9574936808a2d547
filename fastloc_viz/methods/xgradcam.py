"""XGrad-CAM (Fu et al. 2020): the mean gradient weighted by the activation."""

from __future__ import annotations

from dataclasses import dataclass

from .base import register_method
from .cam_family import CAMParams, LayerMapMethod


@register_method
class XGradCAM(LayerMapMethod):
    """The weight of channel c is sum(g_c * A_c) / sum(A_c)
    (:mod:`fastloc_viz.engine.cams`); one forward and one backward pass."""

    name = "xgradcam"
    label = "XGrad-CAM"
    rule = "xgradcam"

    @dataclass(frozen=True)
    class Params(CAMParams):
        threshold: float = 0.20  # chosen for the default box on a development split (docs/results.md)
