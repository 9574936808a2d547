"""The model-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"): does a method's map depend on what the model learned?

On a ``copy.deepcopy`` of the model (never the user's model), re-initialize its layers one
group after another from the top down (cascading: depth ``d`` has the top ``d`` groups
random), recompute each method's map for the same image and the same target class, and
measure how similar it stays to the map of the trained model. A method whose map barely
changes when the model is destroyed does not explain the model.

What counts as one depth (``level=``):

* ``"blocks"`` (default): the model's top-level parameterized modules, with each member of a
  top-level ``nn.Sequential`` / ``nn.ModuleList`` counted on its own, in reverse registration
  order (for most models, the reverse of the forward order). EfficientNet-Lite0 has 21:
  ``_fc``, ``_bn1``, ``_conv_head``, ``_blocks.15`` ... ``_blocks.0``, ``_bn0``,
  ``_conv_stem``.
* ``"modules"``: every module with a ``reset_parameters`` method (each conv, batch norm and
  linear layer), in reverse registration order: Quantus's ``MPRT`` granularity.

Re-initialization is each module's own ``reset_parameters()`` (PyTorch's default init; batch
norms get unit scale, zero shift and fresh running statistics), seeded with
``torch.manual_seed(seed + 1)`` before each module as Quantus does, so that the two agree;
the caller's global RNG state is restored afterwards.

Similarities between the trained model's map and each randomized one (both ``H x W``):

* ``spearman``: Spearman rank correlation of the pixels (scipy), the headline number;
* ``ssim``: structural similarity (scikit-image, ``data_range`` 1 after scaling each map to
  ``[0, 1]`` by its maximum);
* ``hog``: Pearson correlation of the two maps' HOG descriptors (scikit-image ``hog``, 9
  orientations, 16 x 16 px cells (half the map's side if it is under 32 px),
  2 x 2 blocks), Adebayo et al.'s "HOG similarity".

A constant map (all zeros, which Grad-CAM gives when every gradient is negative, as it often
does on a fully randomized copy) has no ranks: its Spearman and HOG correlations are undefined
(NaN), not 0 (which would read as the best score). Such depths are flagged in
``SanityResult.constant``, counted apart and left out of every mean (``evaluate``'s curves,
:func:`fastloc_viz.evaluation.runner.evaluate`); the figures say "constant map"
there. SSIM stays defined and is kept.

The "map is all zero" warnings of the randomized copies' explanations
(:class:`~fastloc_viz.core.maps.EmptyMapWarning`) concern the copy, not the user's model: they
are not shown.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.maps import EmptyMapWarning
from ..model.bundle import ModelBundle, bundle_of
from ..model.state import preserved

__all__ = [
    "LEVELS",
    "SIMILARITIES",
    "SanityResult",
    "map_similarity",
    "randomization_groups",
    "randomized_copies",
    "sanity_check",
]

LEVELS = ("blocks", "modules")
SIMILARITIES = ("spearman", "ssim", "hog")


@dataclass(frozen=True)
class SanityResult:
    """One method's maps and similarities at increasing randomization depths.

    Attributes:
        method: the method's name.
        target: the class explained (the trained model's, kept at every depth).
        original: the trained model's map, ``H x W``.
        depths: the depths computed (number of groups randomized, ``1 .. len(groups)``).
        groups: the name of the last group randomized at each depth (``"_fc"``, ...).
        maps: the map at each depth, ``len(depths) x H x W``.
        spearman, ssim, hog: the similarity to ``original`` at each depth (``spearman`` and
            ``hog`` are NaN where ``constant``).
        n_groups: how many groups the model has (``depths[-1] == n_groups``: fully random).
        constant: per depth, whether the map (or the trained model's) is constant, so that
            it has no rank correlation.
    """

    method: str
    target: int
    original: np.ndarray
    depths: tuple[int, ...]
    groups: tuple[str, ...]
    maps: np.ndarray
    spearman: np.ndarray
    ssim: np.ndarray
    hog: np.ndarray
    n_groups: int
    constant: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    @property
    def similarity(self) -> float:
        """Spearman correlation at the deepest depth computed (full randomization by default);
        NaN when the map there is constant."""
        return float(self.spearman[-1])

    @property
    def constant_groups(self) -> tuple[str, ...]:
        """The depths' group names (``"_fc"`` ...) where the map is constant."""
        return tuple(g for g, c in zip(self.groups, self.constant) if c)

    def to_dict(self, maps: bool = False) -> dict[str, Any]:
        """JSON-ready; an undefined similarity (a constant map) is ``None``."""
        d = {"method": self.method, "target": self.target, "depths": list(self.depths),
             "groups": list(self.groups), "n_groups": self.n_groups,
             "similarity": _json_number(self.similarity), "constant": [bool(c) for c in self.constant],
             **{k: [_json_number(v) for v in getattr(self, k)] for k in SIMILARITIES}}
        if maps:
            d["original"], d["maps"] = self.original.tolist(), self.maps.tolist()
        return d


def _json_number(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def randomization_groups(model: nn.Module, level: str = "blocks") -> list[tuple[str, list[str]]]:
    """The model's randomization groups, top first: ``[(group name, [module names])]``; each
    module listed has ``reset_parameters``. See the module's docstring for ``level``."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not one of {LEVELS}")
    resettable = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
    if level == "modules":
        return [(n or "(model)", [n]) for n in reversed(resettable)]
    groups: list[tuple[str, list[str]]] = []
    for name, child in model.named_children():
        members = [(name, child)]
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            members = [(f"{name}.{n}", c) for n, c in child.named_children()]
        for gname, mod in members:
            inside = [n for n in resettable if n == gname or n.startswith(gname + ".")]
            if inside:
                groups.append((gname, inside))
    if not groups and resettable:  # a model that is one layer
        groups = [(n or "(model)", [n]) for n in resettable]
    if not groups:
        raise ValueError("the model has no module with reset_parameters(): nothing to randomize")
    return groups[::-1]


def randomized_copies(model: nn.Module, groups: Sequence[tuple[str, list[str]]],
                      depths: Sequence[int], seed: int = 42) -> Iterator[tuple[int, nn.Module]]:
    """Yield ``(depth, copy)`` for each depth in ``depths`` (increasing): one deep copy of
    ``model`` with its top ``depth`` groups re-initialized (cascading). The same copy object
    is re-randomized further between yields; ``model`` itself is never modified."""
    with preserved(model):
        twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    done = 0
    with torch.random.fork_rng(devices=[]):
        for depth in depths:
            for _, names in groups[done:depth]:
                for name in reversed(names):  # within a group, top first too
                    torch.manual_seed(seed + 1)
                    with torch.no_grad():
                        modules[name].reset_parameters()
            done = depth
            yield depth, twin


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    top = np.abs(a).max() if a.size else 0.0
    return a / top if top > 0 else a


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman, SSIM and HOG similarity of two ``H x W`` maps (see the module's docstring);
    Spearman and HOG are NaN when either map is constant (no ranks)."""
    from scipy.stats import pearsonr, spearmanr
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    a, b = _unit(a), _unit(b)
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes {a.shape} and {b.shape}")
    const = np.ptp(a) == 0 or np.ptp(b) == 0
    rho = np.nan if const else float(spearmanr(a.ravel(), b.ravel()).statistic)
    ssim = float(structural_similarity(a, b, data_range=1.0))
    cell = max(1, min(16, min(a.shape) // 2))  # 16 px, smaller for maps under 32 px
    ha = hog(a, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))
    hb = hog(b, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))
    h = np.nan if const or np.ptp(ha) == 0 or np.ptp(hb) == 0 else float(pearsonr(ha, hb).statistic)
    return {"spearman": rho, "ssim": ssim, "hog": h}


def _depths(depths: Sequence[int] | None, n: int) -> tuple[int, ...]:
    if depths is None:
        return tuple(range(1, n + 1))
    out = sorted({int(d) for d in depths} | {n})
    bad = [d for d in out if not 1 <= d <= n]
    if bad:
        raise ValueError(f"depths {bad} out of range: the model has {n} randomization groups (1..{n})")
    return tuple(out)


def sanity_check(
    model: ModelBundle | nn.Module,
    image: Any,
    *,
    methods: Sequence[str] = ("gradcam", "guided_backprop"),
    target: int | str | None = None,
    layer: str | None = None,
    level: str = "blocks",
    depths: Sequence[int] | None = None,
    seed: int = 42,
    progress: bool = False,
    explain_kwargs: dict[str, Any] | None = None,
    originals: Mapping[str, Any] | None = None,
) -> dict[str, SanityResult]:
    """Cascading model randomization for one image and several methods.

    Args:
        model: a :class:`~fastloc_viz.ModelBundle` or an ``nn.Module``. Only a deep copy is
            randomized; the model is left exactly as it was (weights, hooks, flags).
        image: one image in any form :func:`fastloc_viz.explain` takes.
        methods: method names from :data:`fastloc_viz.METHODS`.
        target: the class (``None``: the trained model's top-1); the same at every depth.
        layer: probe layer for the methods that use one (``None``: the default); the same
            layer name is probed in every randomized copy.
        level: ``"blocks"`` or ``"modules"``, what one depth is (module docstring).
        depths: which depths to compute (``None``: all); full randomization is always added.
        seed: the re-initialization seed.
        progress: a tqdm bar over the depths.
        explain_kwargs: more keyword arguments for ``explain`` (method parameters; a
            ``layer`` there counts as ``layer``).
        originals: method -> the trained model's explanation of this image, already computed
            with the same arguments (a caller that has it saves one ``explain`` per method).

    Returns:
        ``{method: SanityResult}``.
    """
    from ..methods.explain import explain

    bundle = bundle_of(model)
    kw = dict(explain_kwargs or {})
    layer = kw.pop("layer", layer)
    given = dict(originals or {})
    originals = {
        m: given[m] if m in given else explain(bundle, image, method=m, target=target, layer=layer, **kw)
        for m in methods
    }
    tgt = next(iter(originals.values())).target if originals else None
    groups = randomization_groups(bundle.model, level)
    ds = _depths(depths, len(groups))
    maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    steps: Iterator[tuple[int, nn.Module]] = randomized_copies(bundle.model, groups, ds, seed)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(ds), desc="randomization", unit="depth")
    for _, twin in steps:
        for m, orig in originals.items():
            rb = dataclasses.replace(bundle, model=twin, default_layer=orig.layer or bundle.default_layer)
            with warnings.catch_warnings():  # an empty map of the copy is counted, not warned about
                warnings.simplefilter("ignore", EmptyMapWarning)
                e = explain(rb, image, method=m, target=tgt, layer=orig.layer, **kw)
            maps[m].append(e.saliency)
    out = {}
    for m, orig in originals.items():
        sims = [map_similarity(orig.saliency, s) for s in maps[m]]
        out[m] = SanityResult(
            method=m, target=tgt, original=orig.saliency, depths=ds,
            groups=tuple(groups[d - 1][0] for d in ds), maps=np.stack(maps[m]),
            **{k: np.array([s[k] for s in sims]) for k in SIMILARITIES}, n_groups=len(groups),
            constant=np.array([np.ptp(orig.saliency) == 0 or np.ptp(s) == 0 for s in maps[m]], dtype=bool),
        )
    return out
