"""Eigen-CAM (Muhammad and Yeasin 2020): the first principal component of the layer's
activations; no gradient, and the same map whatever the class."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import cams
from ..model.bundle import as_logits
from .base import register_method
from .cam_family import CAMParams, LayerMapMethod


@register_method
class EigenCAM(LayerMapMethod):
    """The activations, centred per channel, projected on their first principal direction,
    the sign making the larger magnitude positive (:func:`fastloc_viz.engine.cams.eigen_cam`).
    Class-agnostic: it shows what the layer sees most, not where the class is."""

    name = "eigencam"
    label = "Eigen-CAM"

    @dataclass(frozen=True)
    class Params(CAMParams):
        threshold: float = 0.05  # chosen for the default box on a development split (docs/results.md)

    def layer_map(self, ctx, x, targets, params):
        name, module = ctx.layer
        return cams.eigen_cam(ctx.model, x, module, as_logits, name)
