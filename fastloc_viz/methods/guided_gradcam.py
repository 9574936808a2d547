"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import captum_maps
from ..model.bundle import as_logits
from .base import Method, MethodParams, register_method


@register_method
class GuidedGradCAM(Method):
    """Pixel detail from guided backprop, class specificity from Grad-CAM."""

    name = "guided_gradcam"
    label = "Guided Grad-CAM"
    uses_layer = True

    @dataclass(frozen=True)
    class Params(MethodParams):
        threshold: float = 0.23  # chosen for the default box on the development split (docs/results.md)

    def attribute(self, ctx, x, targets, params):
        name, module = ctx.layer
        attr, ctx.mode = captum_maps.guided_gradcam(ctx.model, x, module, targets, as_logits, name)
        return attr
