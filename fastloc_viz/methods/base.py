"""The method registry: what a method declares, and how :func:`fastloc_viz.explain` runs it.

A method is a subclass of :class:`Method` registered with :func:`register_method`. It
declares its ``name`` (what ``explain(method=...)`` takes), a ``label`` for people, whether
it ``uses_layer`` (a probe layer: then ``ctx.layer`` is set), whether it ``has_neurons``
(neuron maps the explorer can show and :func:`~fastloc_viz.recombine` can recombine), its
parameters as a frozen dataclass ``Params`` derived from :class:`MethodParams`, and which of
them are ``recombinable``: they only re-make the map and the box from what an explanation
keeps (:meth:`Method.recombine`, no pass); every other parameter needs a new pass
(:meth:`Method.pass_settings`). The explorer reads these declarations; it names no method.

A simple method implements :meth:`Method.attribute`: given the model's input and the target
classes, return an attribution ``N x C x H x W`` (or ``N x H x W``); ``explain`` takes its
mean over channels, keeps the positive part, smooths it by ``sigma`` and boxes it. A method
that needs more (its own forward pass, per-image records) overrides :meth:`Method.run`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..core import maps as M
from ..core.checks import check_choice, check_sigma, check_threshold
from ..core.maps import COMPONENTS
from ..core.results import Explanation
from ..model.bundle import ModelBundle, as_logits, resolve_targets

__all__ = [
    "METHODS",
    "Attribution",
    "Context",
    "Method",
    "MethodParams",
    "default_of",
    "defaults_text",
    "get_method",
    "methods_where",
    "register_method",
    "unregister_method",
]


@dataclass(frozen=True)
class MethodParams:
    """The parameters every method takes: how its map becomes a box.

    Attributes:
        sigma: Gaussian smoothing in pixels before boxing (``None``: 16 px at 224 px).
        threshold: box threshold, a fraction of the map's maximum.
        components: which connected components make the box: ``"peak"`` (the one holding
            the map's peak), ``"largest"``, ``"all"`` (one scored box each, in
            ``Explanation.boxes``) or ``"merged"`` (one box around them all).
    """

    sigma: float | None = None
    threshold: float = 0.3
    components: str = "peak"

    def check(self) -> None:
        """Raise ``ValueError`` / ``TypeError`` naming a bad value; extend in subclasses."""
        check_sigma(self.sigma)
        check_threshold(self.threshold)
        check_choice("components", self.components, COMPONENTS)


@dataclass
class Context:
    """What a method gets besides the input: the model and its probe layer.

    Attributes:
        bundle: the :class:`~fastloc_viz.ModelBundle`.
        layer: ``(name, module)`` of the probe layer, for methods that use one.
        mode: a method that ran a :class:`~fastloc_viz.engine.guided.GuidedMode` stores it here, so
            ``explain`` can warn about activations the guided rule did not reach.
        batch_size: inputs per forward pass, ``explain``'s ``batch_size``: images there, and
            the masked / occluded / interpolated / noisy copies of a method that runs many
            (Score-CAM, occlusion, integrated gradients, SmoothGrad).
    """

    bundle: ModelBundle
    layer: tuple[str, nn.Module] | None = None
    mode: Any = None
    batch_size: int = 8

    @property
    def model(self) -> nn.Module:
        return self.bundle.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``x`` (``N x classes``), whatever its output type."""
        return as_logits(self.bundle.model(x))


@dataclass
class Attribution:
    """What :meth:`Method.run` returns for a batch of ``N`` images.

    Attributes:
        logits: ``N x classes``, detached.
        targets: ``N`` explained class indices.
        maps: ``N x H x W`` non-negative raw maps (``explain`` smooths and boxes them), or
            ``None`` when ``rows`` give each image's ``saliency``.
        rows: per image, extra :class:`~fastloc_viz.Explanation` fields (``neurons``,
            ``neuron_maps``, ``class_map``, ``layer_shape``, ``saliency``).
        timings: seconds per named stage, for the whole batch.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    maps: np.ndarray | None = None
    rows: list[dict[str, Any]] | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class of every method; see the module's docstring."""

    name: ClassVar[str]
    label: ClassVar[str]
    uses_layer: ClassVar[bool] = False
    has_neurons: ClassVar[bool] = False
    Params: ClassVar[type[MethodParams]] = MethodParams
    recombinable: ClassVar[tuple[str, ...]] = ("threshold", "components")
    """The parameters that only re-make the map and the box from what an explanation keeps
    (:meth:`recombine`: no pass). The base: the box's (re-boxing the map); a method with
    neurons adds how their maps combine."""

    def attribute(self, ctx: Context, x: torch.Tensor, targets: torch.Tensor, params: MethodParams) -> torch.Tensor:
        """The attribution of ``targets`` for the normalized input ``x`` (``N x 3 x H x W``)."""
        raise NotImplementedError(f"method {self.name!r} implements neither attribute() nor run()")

    def run(self, ctx: Context, x: torch.Tensor, targets: Sequence[int | None], params: MethodParams) -> Attribution:
        """One forward pass for the logits, then :meth:`attribute`."""
        t = time.perf_counter()
        with torch.no_grad():
            logits = ctx.forward(x).detach()
        tgt = resolve_targets(logits, targets)
        timings = {"forward": time.perf_counter() - t}
        t = time.perf_counter()
        attr = self.attribute(ctx, x, tgt, params)
        timings["attribution"] = time.perf_counter() - t
        attr = attr.detach().float()
        if attr.dim() == 4:
            attr = attr.mean(dim=1)
        maps = attr.clamp(min=0).cpu().numpy().astype(np.float32)
        return Attribution(logits=logits, targets=tgt, maps=maps, timings=timings)

    def make_params(self, given: Mapping[str, Any]) -> MethodParams:
        """The method's parameters from ``explain``'s keyword arguments, checked.

        ``None`` means the default. Arguments that belong to other registered methods are
        ignored (so one set of arguments can serve a comparison of methods); any other name
        raises ``TypeError``.
        """
        own = {f.name for f in dataclasses.fields(self.Params)}
        known = set().union(*({f.name for f in dataclasses.fields(m.Params)} for m in _REGISTRY.values()))
        unknown = sorted(set(given) - known - own)
        if unknown:
            raise TypeError(
                f"unknown parameter {unknown[0]!r} for method {self.name!r}; it takes {sorted(own)}"
            )
        params = self.Params(**{k: v for k, v in given.items() if k in own and v is not None})
        params.check()
        return params

    def defaults(self) -> dict[str, Any]:
        """The default parameters, as a dict."""
        return dataclasses.asdict(self.Params())

    def pass_settings(self) -> tuple[str, ...]:
        """The parameters whose change needs a new pass: those not :attr:`recombinable`."""
        return tuple(f.name for f in dataclasses.fields(self.Params) if f.name not in self.recombinable)

    def recombine(self, explanation: Explanation, enabled: Sequence[int] | None = None, **settings: Any) -> Explanation:
        """``explanation`` re-made from the maps it keeps, with :attr:`recombinable` settings
        changed (``None``: the explanation's own) and, for a method with neurons, only the
        neurons ranked ``enabled`` (1-based; ``None``: all). No pass.

        Raises ``ValueError`` for a setting that needs a pass, or a bad value.
        """
        heavy = sorted(set(settings) - set(self.recombinable))
        if heavy:
            raise ValueError(
                f"{heavy[0]!r} of method {self.name!r} needs a new pass (explain); recombine "
                f"changes only {list(self.recombinable)}"
            )
        p = self.settle(explanation.params, {k: v for k, v in settings.items() if v is not None})
        own = {f.name for f in dataclasses.fields(self.Params)}
        params = self.Params(**{k: v for k, v in p.items() if k in own})
        params.check()
        saliency, recorded = self.remap(explanation, enabled, params)
        p.update(recorded)
        what = f"the {self.name} map" + (f" of neurons {recorded['enabled']}" if "enabled" in recorded else "")
        fields = M.box_fields(saliency, params.threshold, params.components, what)
        return explanation.replace(saliency=saliency, params=p, **fields)

    def settle(self, before: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        """``before`` (parameters as recorded) with ``changes`` applied, where a parameter left
        unchanged that sat at its default follows its default under the new settings: a
        threshold left at the combine rule's own default follows the rule when the rule
        changes; a threshold the user set stays. Every entry point that changes settings
        (:meth:`recombine`, the widgets' state) settles them here."""
        own = {f.name for f in dataclasses.fields(self.Params)}
        merged = {**before, **changes}
        out = dict(merged)

        def default(settings: Mapping[str, Any], name: str) -> Any:
            return getattr(self.Params(**{k: v for k, v in settings.items() if k in own and k != name and v is not None}), name)

        for name in sorted(own & set(before) - set(changes)):
            if before[name] is not None and default(before, name) == before[name]:
                out[name] = default(merged, name)
        return out

    def remap(self, explanation: Explanation, enabled: Sequence[int] | None, params: MethodParams) -> tuple[np.ndarray, dict]:
        """The map for :meth:`recombine` from what ``explanation`` keeps, and the parameters
        to record with it. The base keeps the map (only the box changes)."""
        if enabled is not None:
            raise ValueError(f"method {self.name!r} has no neuron maps to recombine")
        return explanation.saliency, {}

    def record(self, params: MethodParams, ctx: Context) -> dict[str, Any]:
        """The parameters as stored in ``Explanation.params`` (resolved where they depend on
        the device)."""
        out = dataclasses.asdict(params)
        out["threshold"] = float(out["threshold"])
        return out

    def __repr__(self) -> str:
        return f"<method {self.name!r}: {self.label}>"


_REGISTRY: dict[str, Method] = {}
METHODS: Mapping[str, Method] = MappingProxyType(_REGISTRY)
"""Every registered method, name -> :class:`Method` (a live, read-only view)."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` subclass under its ``name``.

    Re-running the same definition (a notebook cell) replaces it; another class under a
    taken name raises ``ValueError``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method takes a subclass of fastloc_viz.Method, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__name__}.name={name!r} must be an identifier such as 'integrated_gradients'")
    if not isinstance(getattr(cls, "label", None), str):
        raise ValueError(f"{cls.__name__} needs a label, a readable name such as 'Integrated Gradients'")
    if not (dataclasses.is_dataclass(cls.Params) and issubclass(cls.Params, MethodParams)):
        raise TypeError(f"{cls.__name__}.Params must be a dataclass derived from fastloc_viz.MethodParams")
    fields = [f.name for f in dataclasses.fields(cls.Params)]
    stray = [r for r in cls.recombinable if r not in fields]
    if stray:
        raise ValueError(f"{cls.__name__}.recombinable names {stray}, not parameters of its Params ({fields})")
    old = _REGISTRY.get(name)
    if old is not None and (type(old).__module__, type(old).__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"a method named {name!r} is already registered ({type(old).__qualname__})")
    _REGISTRY[name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests and notebook clean-ups)."""
    check_choice("method", name, _REGISTRY)
    del _REGISTRY[name]


def get_method(name: str) -> Method:
    """The registered method called ``name``; ``ValueError`` listing the registered ones."""
    check_choice("method", name, _REGISTRY)
    return _REGISTRY[name]


def methods_where(predicate: Callable[[Method], bool]) -> tuple[str, ...]:
    """The names of the registered methods for which ``predicate(method)`` holds."""
    return tuple(n for n, m in _REGISTRY.items() if predicate(m))


def default_of(method: str, name: str) -> Any:
    """The registered ``method``'s default for its parameter ``name`` (the one source of
    every default: the API, the CLI, the report and the widgets all ask here)."""
    defaults = get_method(method).defaults()
    if name not in defaults:
        raise ValueError(f"method {method!r} has no parameter {name!r}; it takes {sorted(defaults)}")
    return defaults[name]


def defaults_text(name: str) -> str:
    """Each registered method's default for ``name``, in words for ``--help``: ``"fastloc
    0.54, gradcam 0.44, ..."`` (methods without that parameter left out; one value when they
    all agree)."""
    values = {n: m.defaults()[name] for n, m in _REGISTRY.items() if name in m.defaults()}
    if len(set(map(repr, values.values()))) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{n} {v}" for n, v in values.items())
