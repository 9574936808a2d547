"""Saliency (Simonyan et al. 2014): the magnitude of the class logit's gradient w.r.t. the
pixels, the largest over the colour channels."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import captum_maps
from ..model.bundle import as_logits
from .base import Method, MethodParams, register_method


@register_method
class Saliency(Method):
    """Captum's ``Saliency``: one forward and one backward pass."""

    name = "saliency"
    label = "Saliency"

    @dataclass(frozen=True)
    class Params(MethodParams):
        threshold: float = 0.26  # chosen for the default box on a development split (docs/results.md)

    def attribute(self, ctx, x, targets, params):
        return captum_maps.saliency(ctx.model, x, targets, as_logits).amax(dim=1)
