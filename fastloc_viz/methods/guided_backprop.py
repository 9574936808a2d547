"""Guided backpropagation (Springenberg et al. 2015): the input gradient, gated at every ReLU."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import captum_maps
from ..model.bundle import as_logits
from .base import Method, MethodParams, register_method


@register_method
class GuidedBackprop(Method):
    """Captum's ``Saliency`` under :class:`~fastloc_viz.engine.guided.GuidedMode` (exact on ReLU6 and
    inplace ReLUs, where Captum's own ``GuidedBackprop`` is not)."""

    name = "guided_backprop"
    label = "Guided backprop"

    @dataclass(frozen=True)
    class Params(MethodParams):
        threshold: float = 0.25  # chosen for the default box on the development split (docs/results.md)

    def attribute(self, ctx, x, targets, params):
        attr, ctx.mode = captum_maps.guided_backprop(ctx.model, x, targets, as_logits)
        return attr
