"""Occlusion (Zeiler and Fergus 2014): how much the class's logit drops when a square of the
image is covered."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_choice, check_int
from ..engine import captum_maps
from ..model.bundle import as_logits
from .base import Method, MethodParams, register_method
from .inputs import BASELINES, baseline_input


@register_method
class Occlusion(Method):
    """Captum's ``Occlusion``: a ``window`` x ``window`` square set to the ``baseline``, slid
    by ``stride`` (169 positions at 224 px with the defaults), the occluded copies run
    ``batch_size`` at a time; each pixel gets the mean logit drop of the squares covering it."""

    name = "occlusion"
    label = "Occlusion"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """``window``, ``stride``: the square's side and step in input pixels (stride at most
        the window); ``baseline``: ``"mean"`` (grey) or ``"black"``."""

        window: int = 32
        stride: int = 16
        baseline: str = "mean"
        threshold: float = 0.3

        def check(self) -> None:
            super().check()
            check_int("window", self.window, 1)
            check_int("stride", self.stride, 1)
            if self.stride > self.window:
                raise ValueError(f"stride={self.stride} must be at most window={self.window} (else pixels go unoccluded)")
            check_choice("baseline", self.baseline, BASELINES)

    def attribute(self, ctx, x, targets, params):
        h, w = x.shape[-2:]
        if params.window > min(h, w):
            raise ValueError(
                f"window={params.window} is larger than the {h} x {w} input; pass a window of at most {min(h, w)}"
            )
        base = baseline_input(ctx.bundle, x, params.baseline)
        return captum_maps.occlusion(
            ctx.model, x, targets, base, params.window, params.stride, as_logits, ctx.batch_size
        )
