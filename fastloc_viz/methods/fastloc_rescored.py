"""FastLoc with the authors' rescoring: start from ``kmax`` candidates, keep the ``k`` whose
blob alone (the image masked to it) gives the highest target logit."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_int
from ..core.maps import blobs
from ..engine.neuron_passes import rescore
from ..model.bundle import as_logits
from .base import register_method
from .fastloc import FastLoc


@register_method
class FastLocRescored(FastLoc):
    """FastLoc's passes from ``kmax`` candidates, then one batched masked forward pass."""

    name = "fastloc_rescored"
    label = "FastLoc (rescored)"

    @dataclass(frozen=True)
    class Params(FastLoc.Params):
        """``kmax``: candidates rescored (``kmax >= k``; ``None``: ``max(10, 2k)``, twice as
        many as kept and at least 10); the rest as :class:`FastLoc`."""

        kmax: int | None = None

        def check(self) -> None:
            super().check()
            if self.kmax is not None:
                check_int("kmax", self.kmax, self.k, f"at least k={self.k}")

    def candidates(self, params) -> int:
        return max(10, 2 * params.k) if params.kmax is None else params.kmax

    def record(self, params, ctx) -> dict:
        return {**super().record(params, ctx), "kmax": self.candidates(params)}

    def select(self, ctx, x, neuron_maps, target, params):
        scores = rescore(ctx.model, x, blobs(neuron_maps), target, as_logits)
        order = sorted(range(neuron_maps.shape[0]), key=lambda j: (-scores[j], j))[: params.k]
        return order, [float(scores[j]) for j in order]
