"""The result types every method returns: :class:`Explanation`, :class:`Neuron`, :class:`Prediction`.

All arrays are detached NumPy arrays on the CPU, on the model's input grid (``H x W`` after
resizing), so an explanation can be kept, plotted and serialised without holding the graph.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in pixel-edge coordinates of the input grid: the box covers pixel
columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``."""


@dataclass(frozen=True)
class Prediction:
    """One class of the model's prediction."""

    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Neuron:
    """One neuron of the probe layer kept by the ranking (one per channel).

    Attributes:
        rank: 1 for the highest rank score.
        channel, y, x: the unit's position in the layer's ``C x h x w`` map.
        score: the rank score, ``activation * gradient``.
        activation: the unit's activation in the forward pass.
        gradient: d(target logit)/d(unit) (guided or plain, see ``Explanation.params``).
        rescored: the target logit of the image masked to the neuron's blob
            (``fastloc_rescored`` only, else ``None``).
    """

    rank: int
    channel: int
    y: int
    x: int
    score: float
    activation: float
    gradient: float
    rescored: float | None = None


@dataclass(frozen=True)
class Explanation:
    """What a method found for one image and one target class.

    Attributes:
        method: the method's name (``"fastloc"``, ``"gradcam"``, ...).
        target: the explained class index.
        target_name: its name.
        top5: the model's top classes, best first: with ``output="softmax"`` the five most
            probable; with ``"sigmoid"`` every label at or above ``label_threshold`` (possibly
            none, possibly more than five).
        layer: the dotted name of the probe layer (``None`` for methods that use none).
        saliency: ``H x W`` float32 in ``[0, 1]``: the localization map the box comes from.
        box: ``(x0, y0, x1, y1)``, see :data:`Box`; ``None`` when the map is all zero (nothing
            to box).
        image: ``H x W x 3`` float32 RGB in ``[0, 1]``: the image as the model saw it, before
            normalization.
        time_s: wall time of the call that produced this explanation, per image.
        timings: named stages of that time, in seconds.
        params: the parameters that produced it (k, rank_grad, combine, threshold, ...).
        neurons: fastloc methods only: the k kept neurons, best first.
        neuron_maps: fastloc methods only: ``k x H x W`` float32, each neuron's guided-backprop
            map scaled to ``[0, 1]``, in the order of ``neurons``.
        layer_shape: ``(C, h, w)`` of the probe layer, when there is one.
        class_map: fastloc methods only: ``H x W`` float32 in ``[0, 1]``, the probe layer's
            Grad-CAM for the target, from the ranking's own gradient (no extra pass); the
            ``"refine_cam"`` (default), ``"gate_cam"`` and ``"sum_cam"`` rules combine it with the
            neuron maps.
        activation_maps: fastloc methods only: ``k x H x W`` float32 in ``[0, 1]``, where each
            kept neuron's channel fires on this image: its probe-layer activation times the sign of
            the neuron's own activation, upsampled bilinearly to the input grid, positive part
            scaled by its maximum (so the neuron's unit is always lit), in the order of
            ``neurons`` (from the forward pass; no extra pass). ``None`` for other methods and
            for explanations made before it existed.
        probability: the model's probability of the target class (its softmax, or with
            ``output="sigmoid"`` the label's own sigmoid).
        boxes: with ``components="all"``: one ``(box, score)`` per connected component of the
            thresholded map, best first; the score is the map's maximum inside the component
            over the map's maximum (the peak's component: 1.0). ``None`` otherwise.
        box_score: how sure the box is: the share of ``saliency``'s mass inside it, in
            ``[0, 1]`` (:func:`fastloc_viz.core.maps.box_score`; ``None`` without a box).
        box_kind: ``"object"``, ``"whole"`` (the box covers at least 90 % of the image) or
            ``"diffuse"`` (the map outside the box is, on average, at least half as strong as
            inside): :func:`fastloc_viz.core.maps.box_kind`; ``None`` without a box.
        original_size: ``(width, height)`` of the photo before it was resized to the grid:
            a file's full size (``ImageInfo.size``), an array's or tensor's own size; ``None``
            when unknown (then the grid is taken as the photo). See :attr:`box_original`.
        output: how the probabilities were read: ``"softmax"`` or ``"sigmoid"``.
        label_threshold: with ``"sigmoid"``, the probability from which a label is in
            ``top5`` (``None`` for softmax).
    """

    method: str
    target: int
    target_name: str
    top5: tuple[Prediction, ...]
    layer: str | None
    saliency: np.ndarray
    box: Box | None
    image: np.ndarray
    time_s: float
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    neurons: tuple[Neuron, ...] | None = None
    neuron_maps: np.ndarray | None = None
    layer_shape: tuple[int, int, int] | None = None
    class_map: np.ndarray | None = None
    activation_maps: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    probability: float | None = None
    boxes: tuple[tuple[Box, float], ...] | None = None
    box_score: float | None = None
    box_kind: str | None = None
    output: str = "softmax"
    label_threshold: float | None = None

    @property
    def top_title(self) -> str:
        """What :attr:`top5` holds, as a title: ``"Top-5 predictions"``, or with sigmoid
        outputs ``"Labels at or above 50%"``."""
        if self.output == "sigmoid":
            return f"Labels at or above {self.label_threshold:.0%}"
        return "Top-5 predictions"

    @property
    def photo_size(self) -> tuple[int, int]:
        """``(width, height)`` of the original photo (the grid's when it is not known)."""
        if self.original_size is not None:
            return (int(self.original_size[0]), int(self.original_size[1]))
        h, w = self.input_size
        return (w, h)

    @property
    def box_original(self) -> Box | None:
        """:attr:`box` in the original photo's pixels, by :func:`box_to_original` (``None``
        when there is no box)."""
        if self.box is None:
            return None
        return box_to_original(self.box, self.input_size, self.photo_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the model's input grid."""
        return tuple(self.saliency.shape)  # type: ignore[return-value]

    def replace(self, **changes: Any) -> Explanation:
        """A copy with some fields changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready builtins."""
        out: dict[str, Any] = {
            "method": self.method,
            "target": {"index": self.target, "name": self.target_name, "probability": self.probability},
            "top5": [dataclasses.asdict(p) for p in self.top5],
            "output": self.output,
            "label_threshold": self.label_threshold,
            "layer": self.layer,
            "layer_shape": list(self.layer_shape) if self.layer_shape else None,
            "input_size": list(self.input_size),
            "box": None if self.box is None else list(self.box),
            "box_score": self.box_score,
            "box_kind": self.box_kind,
            "original_size": list(self.photo_size),
            "box_original": None if self.box is None else list(self.box_original),
            "time_s": self.time_s,
            "timings": dict(self.timings),
            "params": _jsonable(self.params),
        }
        if self.boxes is not None:
            out["boxes"] = [
                {"box": list(b), "box_original": list(box_to_original(b, self.input_size, self.photo_size)), "score": sc}
                for b, sc in self.boxes
            ]
        if self.neurons is not None:
            out["neurons"] = [dataclasses.asdict(n) for n in self.neurons]
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def box_to_original(box: Box, grid_size: tuple[int, int], original_size: tuple[int, int]) -> Box:
    """A box on the model's grid -> the same box in the original photo's pixels.

    The photo (``original_size = (W0, H0)``) was stretched, not cropped, to the grid
    (``grid_size = (H, W)``), so a pixel edge at grid coordinate ``x`` is at ``x * W0 / W``
    in the photo (``y * H0 / H`` vertically). Each edge is scaled so and rounded outward, to
    whole photo pixels that cover the whole grid box: ``x0' = floor(x0 * W0 / W)``,
    ``x1' = ceil(x1 * W0 / W)`` (same for ``y``), in exact integer arithmetic, then clipped to
    ``0 .. W0`` and ``0 .. H0``. A box covering the whole grid covers the whole photo.
    """
    h, w = int(grid_size[0]), int(grid_size[1])
    w0, h0 = int(original_size[0]), int(original_size[1])
    x0, y0, x1, y1 = (int(v) for v in box)

    def lo(v: int, full: int, grid: int) -> int:
        return min(max((v * full) // grid, 0), full)

    def hi(v: int, full: int, grid: int) -> int:
        return min(max(-((-v * full) // grid), 0), full)

    return (lo(x0, w0, w), lo(y0, h0, h), hi(x1, w0, w), hi(y1, h0, h))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
