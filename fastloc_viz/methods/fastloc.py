"""FastLoc, the poster's method: rank the probe layer's neurons by activation x gradient,
keep the top k (one per channel), guided-backprop from each, combine the k maps."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core import maps as M
from ..core.checks import check_choice, check_int
from ..engine.neuron_passes import PASSES, RANK_GRADS, grads_to_maps, neuron_pass, neurons_of
from ..model.bundle import as_logits
from .base import Attribution, Method, MethodParams, register_method
from .combine import RULES, combine_maps


@register_method
class FastLoc(Method):
    """One forward pass, one backward pass to rank, k partial backward passes to the image.

    The combined map (``combine="refine_cam"``) starts from the probe layer's Grad-CAM,
    computed from the ranking's own gradient at no extra cost, and raises it toward its peak
    where the k neuron maps (weighted by that Grad-CAM squared, averaged, smoothed) fire: the
    class map decides where, the neurons how far (see :mod:`fastloc_viz.methods.combine`). The box
    threshold is the combine rule's own (0.54 for ``refine_cam``), chosen for the box users get
    on a development split of three models (docs/results.md).
    """

    name = "fastloc"
    label = "FastLoc"
    uses_layer = True
    has_neurons = True
    recombinable = ("threshold", "components", "sigma", "combine")  # from the kept neuron maps

    @dataclass(frozen=True)
    class Params(MethodParams):
        """``k``: neurons kept; ``rank_grad``: ``"plain"`` or ``"guided"`` gradient for the
        ranking; ``combine``: a rule of :data:`fastloc_viz.methods.combine.RULES`; ``passes``:
        ``"loop"``, ``"batched"`` or ``"auto"`` (batched on GPU, loop on CPU)."""

        k: int = 5
        rank_grad: str = "plain"
        combine: str = "refine_cam"
        threshold: float | None = None  # None: the combine rule's own (RULES[combine].threshold)
        passes: str = "auto"

        def __post_init__(self) -> None:
            if self.threshold is None and self.combine in RULES:  # an unknown rule: check() says so
                object.__setattr__(self, "threshold", RULES[self.combine].threshold)

        def check(self) -> None:
            check_choice("rank_grad", self.rank_grad, RANK_GRADS)
            check_choice("passes", self.passes, PASSES)
            check_choice("combine", self.combine, RULES)
            super().check()
            check_int("k", self.k, 1)

    def candidates(self, params) -> int:
        """How many neurons the passes start from."""
        return params.k

    def run(self, ctx, x, targets: Sequence[int | None], params) -> Attribution:
        npass = neuron_pass(
            ctx.model, x, ctx.layer, targets, self.candidates(params), params.rank_grad, params.passes, as_logits
        )
        ctx.mode = npass.mode
        timings = dict(npass.timings)
        t = time.perf_counter()
        all_maps = grads_to_maps(npass.input_grads)  # N x candidates x H x W
        class_maps = npass.class_map.float().cpu().numpy()
        act_maps = npass.activation_maps.cpu().numpy().astype(np.float32, copy=False)
        rows = []
        for i in range(all_maps.shape[0]):
            order, rescored = self.select(ctx, x[i : i + 1], all_maps[i], int(npass.targets[i]), params)
            neurons = neurons_of(npass, i, order, rescored)
            kept = all_maps[i, order]
            cam = M.normalize(class_maps[i])
            sal = self.combined_map(kept, [n.score for n in neurons], cam, params)
            rows.append(
                {
                    "neurons": neurons,
                    "neuron_maps": kept,
                    "activation_maps": act_maps[i, order],
                    "layer_shape": npass.layer_shape,
                    "saliency": sal,
                    "class_map": cam,
                }
            )
        timings["maps"] = time.perf_counter() - t
        return Attribution(logits=npass.logits, targets=npass.targets, rows=rows, timings=timings)

    def combined_map(self, neuron_maps: np.ndarray, scores: Sequence[float], class_map: np.ndarray | None, params) -> np.ndarray:
        """The map from the kept neuron maps (``k x H x W``, best first): ``params.combine``'s
        rule. ``explain`` and :meth:`recombine` both make the map here."""
        return combine_maps(neuron_maps, rule=params.combine, scores=scores, sigma=params.sigma, class_map=class_map)

    def remap(self, explanation, enabled, params):
        """The neurons ranked ``enabled`` (``None``: all), combined again."""
        if explanation.neuron_maps is None or explanation.neurons is None:
            raise ValueError(f"method {explanation.method!r} has no neuron maps to recombine")
        ranks = [n.rank for n in explanation.neurons]
        enabled = list(ranks) if enabled is None else sorted({int(r) for r in enabled})
        bad = [r for r in enabled if r not in ranks]
        if bad:
            raise ValueError(f"enabled ranks {bad} do not exist; the neurons have ranks {ranks}")
        idx = [ranks.index(r) for r in enabled]
        scores = [explanation.neurons[i].score for i in idx]
        return self.combined_map(explanation.neuron_maps[idx], scores, explanation.class_map, params), {"enabled": enabled}

    def select(self, ctx, x, neuron_maps: np.ndarray, target: int, params) -> tuple[list[int], list[float] | None]:
        """Which candidates to keep, best first, and their rescored logits (``None``)."""
        return list(range(neuron_maps.shape[0])), None

    def record(self, params, ctx) -> dict:
        p = super().record(params, ctx)
        if p["passes"] == "auto":
            p["passes"] = "loop" if ctx.bundle.device.type == "cpu" else "batched"
        return p
