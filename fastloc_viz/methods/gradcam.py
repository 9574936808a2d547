"""Grad-CAM (Selvaraju et al. 2017), computed by Captum's ``LayerGradCam`` at the probe layer."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import captum_maps
from ..model.bundle import as_logits
from .base import Method, MethodParams, register_method


@register_method
class GradCAM(Method):
    """The probe layer's activations weighted by their mean gradient, ReLU, upsampled."""

    name = "gradcam"
    label = "Grad-CAM"
    uses_layer = True

    @dataclass(frozen=True)
    class Params(MethodParams):
        sigma: float | None = 0.0  # already smooth: upsampled from the layer's grid
        threshold: float = 0.44  # chosen for the default box on the development split (docs/results.md)

    def attribute(self, ctx, x, targets, params):
        name, module = ctx.layer
        return captum_maps.gradcam(ctx.model, x, module, targets, as_logits, name)
