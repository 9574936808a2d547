"""LayerCAM (Jiang et al. 2021): each position weighted by its own positive gradient."""

from __future__ import annotations

from dataclasses import dataclass

from .base import register_method
from .cam_family import CAMParams, LayerMapMethod


@register_method
class LayerCAM(LayerMapMethod):
    """relu(sum_c relu(g_c) * A_c): no pooling of the gradient, so early layers give fine
    maps too; one forward and one backward pass."""

    name = "layercam"
    label = "LayerCAM"
    rule = "layercam"

    @dataclass(frozen=True)
    class Params(CAMParams):
        threshold: float = 0.34  # chosen for the default box on a development split (docs/results.md)
