"""Integrated gradients (Sundararajan et al. 2017): the gradient integrated along the
straight path from a baseline image to the input, times the difference."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_choice, check_int
from ..engine import captum_maps
from ..model.bundle import as_logits
from .base import Method, MethodParams, register_method
from .inputs import BASELINES, baseline_input


@register_method
class IntegratedGradients(Method):
    """Captum's ``IntegratedGradients``: ``steps`` forward and backward passes per image, run
    ``batch_size`` at a time; the map is the positive part of the attribution summed over
    colour channels (the pixels that raise the class's logit)."""

    name = "integrated_gradients"
    label = "Integrated gradients"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """``steps``: points on the path (Gauss-Legendre); ``baseline``: ``"black"`` or
        ``"mean"`` (:data:`fastloc_viz.methods.inputs.BASELINES`)."""

        steps: int = 32
        baseline: str = "black"
        threshold: float = 0.24  # chosen for the default box on a development split (docs/results.md)

        def check(self) -> None:
            super().check()
            check_int("steps", self.steps, 1)
            check_choice("baseline", self.baseline, BASELINES)

    def attribute(self, ctx, x, targets, params):
        base = baseline_input(ctx.bundle, x, params.baseline)
        return captum_maps.integrated_gradients(
            ctx.model, x, targets, base, params.steps, as_logits, ctx.batch_size
        ).sum(dim=1)
