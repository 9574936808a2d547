"""Grad-CAM++ (Chattopadhay et al. 2018): Grad-CAM with per-position gradient weights."""

from __future__ import annotations

from dataclasses import dataclass

from .base import register_method
from .cam_family import CAMParams, LayerMapMethod


@register_method
class GradCAMpp(LayerMapMethod):
    """Each channel weighted by the sum of its positive gradients, each scaled by Eq. 19's
    alpha (:mod:`fastloc_viz.engine.cams`); one forward and one backward pass."""

    name = "gradcam_pp"
    label = "Grad-CAM++"
    rule = "gradcam_pp"

    @dataclass(frozen=True)
    class Params(CAMParams):
        threshold: float = 0.30  # chosen for the default box on a development split (docs/results.md)
