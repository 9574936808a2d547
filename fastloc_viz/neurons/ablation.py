"""What a kept neuron does to the prediction: zero it at the probe layer and read the target
class again.

:func:`ablate` runs the image's copies through the model once, as one batch, with a forward
hook on the probe layer that multiplies each copy's activation by its own 0/1 mask (the
layers below the probe run once, on the one image, and the hook hands the masked copies
upward: see ``shared_prefix``):

* ``base``: nothing zeroed;
* ``channel_off``: one copy per kept neuron, its whole channel zeroed;
* ``unit_off``: one copy per kept neuron, only its single unit ``(channel, y, x)`` zeroed;
* ``all_off``: the k kept channels zeroed together;
* ``only_kept``: every channel zeroed except the k kept ones.

No backward pass, no graph (``torch.no_grad``); the model is left as it was, also when the
pass raises (:func:`fastloc_viz.model.state.preserved`). :func:`ablate_channels` zeroes any sets
of channels the same way (the explorer's unticked subset), and :func:`random_control`
zeroes k random channels of the same layer many times: the chance level a drop must beat.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.results import Explanation, Prediction
from ..imaging.decode import to_channels
from ..model.bundle import ModelBundle, as_logits, bundle_of
from ..model.layers import resolve_layer
from ..model.state import forward_hook, preserved, require_called, require_spatial
from ..model.tokens import as_map, token_grid

__all__ = ["Ablation", "Outcome", "RandomControl", "ablate", "ablate_channels", "random_control"]

log = logging.getLogger("fastloc_viz")

# Models on which a shared-prefix run failed (e.g. EfficientNet-Lite0's head reshapes with the
# input's batch size): not tried again.
_NO_SHARED_PREFIX: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class Outcome:
    """The model's answer on one ablated copy.

    Attributes:
        probability: the explained class's probability (softmax, or its sigmoid: the bundle's ``output``).
        logit: its logit.
        top: the model's top-1 class on this copy.
    """

    probability: float
    logit: float
    top: Prediction


@dataclass(frozen=True)
class Ablation:
    """:func:`ablate`'s result; ``channel_off`` and ``unit_off`` follow ``Explanation.neurons``.

    Attributes:
        target, target_name: the explained class.
        layer: the probe layer.
        ranks, channels: the kept neurons' ranks and channels, in order.
        base: nothing zeroed.
        channel_off: per neuron, its channel zeroed.
        unit_off: per neuron, its single unit zeroed.
        all_off: the k channels zeroed together.
        only_kept: only the k channels left.
    """

    target: int
    target_name: str
    layer: str
    ranks: tuple[int, ...]
    channels: tuple[int, ...]
    base: Outcome
    channel_off: tuple[Outcome, ...]
    unit_off: tuple[Outcome, ...]
    all_off: Outcome
    only_kept: Outcome

    @property
    def channel_drops(self) -> tuple[float, ...]:
        """Per neuron: ``base.probability - channel_off[i].probability`` (positive: the
        neuron's channel supports the class)."""
        return tuple(self.base.probability - o.probability for o in self.channel_off)

    @property
    def unit_drops(self) -> tuple[float, ...]:
        """Per neuron: the probability drop when only its unit is zeroed."""
        return tuple(self.base.probability - o.probability for o in self.unit_off)

    def drop(self, rank: int) -> float:
        """The probability drop of the neuron of ``rank`` (its channel zeroed)."""
        if rank not in self.ranks:
            raise ValueError(f"no neuron of rank {rank}; the ranks are {list(self.ranks)}")
        return self.channel_drops[self.ranks.index(rank)]

    def to_dict(self) -> dict:
        def o(x: Outcome) -> dict:
            return {"probability": x.probability, "logit": x.logit, "top": {"index": x.top.index, "name": x.top.name}}

        return {
            "target": {"index": self.target, "name": self.target_name},
            "layer": self.layer,
            "ranks": list(self.ranks),
            "channels": list(self.channels),
            "base": o(self.base),
            "channel_off": [o(x) for x in self.channel_off],
            "unit_off": [o(x) for x in self.unit_off],
            "all_off": o(self.all_off),
            "only_kept": o(self.only_kept),
        }


@dataclass(frozen=True)
class RandomControl:
    """:func:`random_control`'s result: ``draws`` copies, each with ``k`` random channels off.

    Attributes:
        channels: ``draws x k`` the channels zeroed in each draw.
        probability, logit: ``draws`` values of the explained class.
        base: the unablated outcome.
    """

    channels: np.ndarray
    probability: np.ndarray
    logit: np.ndarray
    base: Outcome

    @property
    def drops(self) -> np.ndarray:
        """``base.probability - probability`` for each draw."""
        return self.base.probability - self.probability

    def fraction_at_least(self, drop: float) -> float:
        """The share of random draws whose drop is at least ``drop``: how often chance does
        as much (with ``(hits + 1) / (draws + 1)``, never 0)."""
        hits = int(np.sum(self.drops >= drop))
        return (hits + 1) / (len(self.drops) + 1)


# A copy's recipe: channels to zero, units (c, y, x) to zero, and channels to keep (the
# rest zeroed) or None.
_Spec = tuple[Sequence[int], Sequence[tuple[int, int, int]], Sequence[int] | None]


def _explained(bundle: ModelBundle, explanation: Explanation) -> tuple[torch.Tensor, tuple[str, nn.Module]]:
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation must be an Explanation, got {type(explanation).__name__}")
    if explanation.layer is None:
        raise ValueError(f"method {explanation.method!r} has no probe layer to ablate")
    image = torch.from_numpy(np.ascontiguousarray(explanation.image, dtype=np.float32)).permute(2, 0, 1)[None]
    return to_channels(image, bundle.channels), resolve_layer(bundle.model, explanation.layer)


def _forward_masked(
    bundle: ModelBundle,
    image: torch.Tensor,
    layer: tuple[str, nn.Module],
    specs: Sequence[_Spec],
    batch_size: int,
    shared_prefix: bool = True,
) -> torch.Tensor:
    """Logits (``len(specs) x classes``, CPU, float32 or float64) of copies of ``image`` with
    the probe layer's output multiplied by each spec's mask; one forward per ``batch_size``
    copies.

    With ``shared_prefix`` the model runs on the one image up to the probe layer, and the
    hook hands downstream the ``B`` masked copies of its output: the layers below the probe
    run once instead of ``B`` times (the same numbers: they see the same image). This needs
    the layers above the probe to take their batch from the probe's output (anything that
    mixes in an earlier tensor must broadcast over it); when the output does not come back
    with ``B`` rows, or the forward raises, the chunk is run again with ``B`` full copies,
    and the model is not tried again (EfficientNet-Lite0's head reshapes by the input's
    batch size: it always runs full copies).
    """
    out_logits = []
    with preserved(bundle.model), torch.no_grad():
        x1 = bundle.preprocess(image)
        for s in range(0, len(specs), batch_size):
            chunk = specs[s : s + batch_size]
            logits = None
            if shared_prefix and len(chunk) > 1 and bundle.model not in _NO_SHARED_PREFIX:
                try:
                    logits = _run_chunk(bundle, x1, layer, chunk, expand=True)
                except RuntimeError as err:
                    log.debug("fastloc_viz: shared-prefix ablation failed (%s); running full copies", err)
                if logits is None or logits.shape[0] != len(chunk):
                    logits = None
                    _NO_SHARED_PREFIX.add(bundle.model)
            if logits is None:
                logits = _run_chunk(bundle, x1.expand(len(chunk), *x1.shape[1:]).contiguous(), layer, chunk, expand=False)
            keep = logits.dtype in (torch.float32, torch.float64)  # bfloat16 / float16: float32
            out_logits.append((logits if keep else logits.float()).cpu())
    return torch.cat(out_logits)


def _run_chunk(bundle: ModelBundle, x: torch.Tensor, layer, chunk: Sequence[_Spec], expand: bool) -> torch.Tensor:
    """One forward pass of ``x``; the probe's output (``expand``: repeated to ``len(chunk)``
    rows) multiplied by the chunk's masks."""
    name, module = layer
    seen: dict = {"calls": 0, "out": None}

    def hook(_m, _inp, out):
        seen["calls"] += 1
        seen["out"] = out
        if seen["calls"] > 1 or not (isinstance(out, torch.Tensor) and out.dim() in (3, 4)):
            return None
        grid = None
        if out.dim() == 3:  # a ViT block's tokens: mask their patch grid, keep the prefix tokens
            grid = token_grid(bundle.model, tuple(out.shape), size)
            if grid is None:
                return None  # as_map below names the problem
        c = out.shape[1] if grid is None else out.shape[2]
        shape = (len(chunk), c, *((grid.h, grid.w) if grid else out.shape[2:]))
        mask = torch.ones(shape, dtype=out.dtype, device=out.device)
        for row, (off, units, keep) in enumerate(chunk):
            bad = [ch for ch in [*off, *(u[0] for u in units), *(keep or ())] if not 0 <= ch < c]
            if bad:
                raise ValueError(f"channels {bad} do not exist in layer {name!r} ({c} channels)")
            if keep is not None:
                mask[row] = 0
                mask[row, list(keep)] = 1
            if off:
                mask[row, list(off)] = 0
            for ch, y, xx in units:
                mask[row, ch, y, xx] = 0
        if grid is not None:
            mask = grid.to_tokens(mask)
        return (out.expand(len(chunk), *out.shape[1:]) if expand else out) * mask

    size = tuple(x.shape[-2:])
    with forward_hook(module, hook):
        logits = as_logits(bundle.model(x))
    require_called(name, seen["calls"])
    require_spatial(name, as_map(bundle.model, name, seen["out"], size)[0])
    return logits


def _outcomes(bundle: ModelBundle, logits: torch.Tensor, target: int) -> list[Outcome]:
    probs = bundle.probabilities(logits)
    top_p, top_i = probs.max(dim=1)
    return [
        Outcome(
            probability=float(probs[r, target]),
            logit=float(logits[r, target]),
            top=Prediction(int(top_i[r]), bundle.class_name(int(top_i[r])), float(top_p[r])),
        )
        for r in range(len(logits))
    ]


def ablate(model: ModelBundle | nn.Module, explanation: Explanation, *, shared_prefix: bool = True) -> Ablation:
    """Zero the kept neurons at the probe layer and read the explained class again.

    One batched forward pass of ``2k + 3`` copies of the explanation's image, no backward
    pass (see the module's docstring for the cases).

    Args:
        model: the bundle (or module) the explanation was made with.
        explanation: a fastloc explanation (``neurons`` and ``layer``).
        shared_prefix: run the layers below the probe once, on the one image, and only the
            layers above it on the copies (the default; falls back to full copies when the
            model does not allow it). ``False``: every copy runs the whole model.

    Returns:
        An :class:`Ablation`.
    """
    bundle = bundle_of(model)
    if explanation.neurons is None:
        raise ValueError(f"method {explanation.method!r} keeps no neurons to ablate")
    image, layer = _explained(bundle, explanation)
    neurons = explanation.neurons
    chans = [n.channel for n in neurons]
    specs: list[_Spec] = [((), (), None)]
    specs += [((n.channel,), (), None) for n in neurons]
    specs += [((), ((n.channel, n.y, n.x),), None) for n in neurons]
    specs += [(chans, (), None), ((), (), chans)]
    logits = _forward_masked(bundle, image, layer, specs, batch_size=len(specs), shared_prefix=shared_prefix)
    out = _outcomes(bundle, logits, explanation.target)
    k = len(neurons)
    return Ablation(
        target=explanation.target,
        target_name=explanation.target_name,
        layer=layer[0],
        ranks=tuple(n.rank for n in neurons),
        channels=tuple(chans),
        base=out[0],
        channel_off=tuple(out[1 : 1 + k]),
        unit_off=tuple(out[1 + k : 1 + 2 * k]),
        all_off=out[1 + 2 * k],
        only_kept=out[2 + 2 * k],
    )


def ablate_channels(
    model: ModelBundle | nn.Module,
    explanation: Explanation,
    channel_sets: Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
    shared_prefix: bool = True,
) -> list[Outcome]:
    """The explained class with each set of probe-layer channels zeroed (one copy per set,
    ``batch_size`` copies per forward pass, no backward pass). An empty set is the
    unablated model."""
    bundle = bundle_of(model)
    image, layer = _explained(bundle, explanation)
    specs: list[_Spec] = [(tuple(int(c) for c in cs), (), None) for cs in channel_sets]
    if not specs:
        return []
    logits = _forward_masked(bundle, image, layer, specs, batch_size, shared_prefix)
    return _outcomes(bundle, logits, explanation.target)


def random_control(
    model: ModelBundle | nn.Module,
    explanation: Explanation,
    *,
    draws: int = 200,
    k: int | None = None,
    seed: int = 0,
    exclude_kept: bool = True,
    batch_size: int = 64,
    shared_prefix: bool = True,
) -> RandomControl:
    """Zero ``k`` random channels of the probe layer, ``draws`` times: how much the explained
    class drops by chance.

    Args:
        k: channels per draw (default: as many as the explanation kept).
        seed: the draws' random seed (NumPy ``default_rng``).
        exclude_kept: draw only among the channels the explanation did not keep.
    """
    bundle = bundle_of(model)
    if explanation.layer_shape is None:
        raise ValueError(f"method {explanation.method!r} has no probe layer to ablate")
    c = explanation.layer_shape[0]
    kept = {n.channel for n in explanation.neurons or ()}
    k = len(kept) if k is None else int(k)
    pool = np.array([ch for ch in range(c) if not (exclude_kept and ch in kept)])
    if not 1 <= k <= len(pool):
        raise ValueError(f"k={k} must be between 1 and the {len(pool)} channels to draw from")
    rng = np.random.default_rng(seed)
    chans = np.stack([np.sort(rng.choice(pool, size=k, replace=False)) for _ in range(draws)])
    outs = ablate_channels(
        bundle, explanation, [()] + [list(row) for row in chans], batch_size=batch_size, shared_prefix=shared_prefix
    )
    return RandomControl(
        channels=chans,
        probability=np.array([o.probability for o in outs[1:]]),
        logit=np.array([o.logit for o in outs[1:]]),
        base=outs[0],
    )
