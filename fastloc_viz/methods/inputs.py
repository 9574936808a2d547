"""What the perturbation methods put in the input's place, in the model's input space: the
baselines of integrated gradients and occlusion, and the span SmoothGrad's noise is a
fraction of. From the bundle's own preprocessing, so a model with its own normalization
(``ModelBundle.transform``) gets its own black and its own span."""

from __future__ import annotations

import torch

from ..model.bundle import ModelBundle

BASELINES = ("black", "mean")
"""``"black"``: the black image; ``"mean"``: zero in the model's input space (the data set's
mean colour under mean / std normalization, a grey)."""


def baseline_input(bundle: ModelBundle, x: torch.Tensor, baseline: str) -> torch.Tensor | float:
    """The ``baseline`` for the normalized input ``x`` (``N x C x H x W``)."""
    if baseline == "mean":
        return 0.0
    return bundle.preprocess(torch.zeros_like(x)).to(x.dtype)


def input_span(bundle: ModelBundle, x: torch.Tensor) -> float:
    """The mean over channels of (white - black) in the model's input space (1 / std for
    mean / std normalization): SmoothGrad's noise level is a fraction of it."""
    ones = torch.ones_like(x[:1])
    return float((bundle.preprocess(ones) - bundle.preprocess(torch.zeros_like(ones))).mean())
