"""What the CAM-family methods share: a probe layer, a map at the layer's resolution
(:mod:`fastloc_viz.engine.cams`), upsampled bilinearly to the input, already smooth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..engine import cams
from ..model.bundle import as_logits
from .base import Method, MethodParams


@dataclass(frozen=True)
class CAMParams(MethodParams):
    sigma: float | None = 0.0  # already smooth: upsampled from the layer's grid


class LayerMapMethod(Method):
    """A CAM-family method: :meth:`layer_map` gives ``N x h x w`` on the layer's grid (a conv
    layer's or a ViT block's patch grid); ``explain`` gets it upsampled to the input."""

    uses_layer = True
    Params = CAMParams
    rule: ClassVar[str | None] = None  # a gradient rule of cams.GRADIENT_RULES, or None

    def layer_map(self, ctx, x: torch.Tensor, targets: torch.Tensor, params) -> torch.Tensor:
        """The map at the layer's resolution; the gradient rules by default."""
        name, module = ctx.layer
        return cams.gradient_cam(ctx.model, x, module, targets, self.rule, as_logits, name)

    def attribute(self, ctx, x, targets, params):
        return cams.upsample(self.layer_map(ctx, x, targets, params), tuple(x.shape[-2:]))
