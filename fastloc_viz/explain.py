"""The one entry point: :func:`explain`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import baselines, boxes
from .explanation import Explanation, Prediction
from .fastloc import (
    COMBINES,
    PASSES,
    RANK_GRADS,
    blobs,
    combine_maps,
    default_sigma,
    grads_to_maps,
    neuron_pass,
    neurons_of,
    rescore,
)
from .guided import untreated_activation_modules, warn_untreated
from .hooks import default_layer, preserved, resolve_layer
from .images import is_batch, load_batch_info, to_numpy_image
from .models import ModelBundle, as_logits, bundle_of

log = logging.getLogger("fastloc_viz")

METHODS = ("fastloc", "fastloc_rescored", "gradcam", "guided_backprop", "guided_gradcam")
_LAYER_METHODS = ("fastloc", "fastloc_rescored", "gradcam", "guided_gradcam")
METHOD_DEFAULTS = {  # combine, components, sigma (None: default_sigma)
    "fastloc": ("gate_cam", "largest", None),
    "fastloc_rescored": ("gate_cam", "largest", None),
    "gradcam": (None, "largest", 0.0),
    "guided_backprop": (None, "largest", None),
    "guided_gradcam": (None, "largest", None),
}
"""Each method's default ``(combine, components, sigma)``; ``sigma=None``: 16 px at 224 px."""
DEFAULT_COMBINE = {m: d[0] for m, d in METHOD_DEFAULTS.items() if d[0] is not None}
"""The default ``combine`` rule of each fastloc method."""


def explain(
    model: ModelBundle | nn.Module,
    image: Any,
    *,
    method: str = "fastloc",
    target: int | str | None | Sequence[int | str | None] = None,
    layer: str | nn.Module | None = None,
    k: int = 5,
    kmax: int = 10,
    rank_grad: str = "plain",
    combine: str | None = None,
    sigma: float | None = None,
    threshold: float = 0.3,
    components: str | None = None,
    passes: str = "auto",
    batch_size: int = 8,
    progress: bool | None = None,
) -> Explanation | list[Explanation]:
    """Explain a classifier's decision for one image or a batch.

    Args:
        model: a :class:`ModelBundle` from :func:`load_model`, or an ``nn.Module`` (then
            ImageNet normalization and numbered class names are assumed).
        image: a path, PIL image, NumPy array or tensor in ``[0, 1]`` (see
            :mod:`fastloc_viz.images`), or a list / 4-D batch of them.
        method: one of :data:`METHODS`.
        target: class index or name to explain, ``None`` for the top-1 prediction; for a
            batch, one value for all or a sequence with one per image.
        layer: probe layer, a dotted name or a module. ``None`` uses the bundle's
            ``default_layer``, else a dry run picks (and logs) the last stride-32 feature map
            (Grad-CAM's usual last conv block; ``_blocks.15`` of EfficientNet-Lite0). The
            poster probed a stride-16 map (VGG-16's "layer 11"); on EfficientNet-Lite0 the
            stride-32 map with ``combine="gate_cam"`` localizes better (docs/results.md).
        k: neurons kept (fastloc methods).
        kmax: candidates rescored by ``fastloc_rescored`` (``kmax >= k``).
        rank_grad: ``"plain"`` (default) or ``"guided"`` (the authors': gated like guided
            backprop above the layer) gradient for the ranking. Plain is the default because
            it keeps the ranking class-specific: on 2x2 class-query collages the map's peak
            lands in the queried photo 0.70 of the time against 0.42 with guided ranking,
            and the two tie on single-object images (docs/results.md).
        combine: ``"gate_cam"``, ``"sum_cam"``, ``"sum"``, ``"max"``, ``"weighted"`` or
            ``"union"`` (see :func:`fastloc_viz.fastloc.combine_maps`); default ``"gate_cam"``
            (the neuron maps, each weighted by the layer's Grad-CAM from the same gradient,
            averaged, smoothed, plus that Grad-CAM) for both fastloc methods. The authors'
            box for ``fastloc_rescored`` is ``combine="union", components="all"`` (the extent
            of the union of the kept neurons' blobs); it lost by far (docs/results.md).
        sigma: Gaussian smoothing in pixels before boxing; default 16 px at 224 px for the
            guided methods, 0 for Grad-CAM.
        threshold: box threshold, a fraction of the map's maximum.
        components: ``"largest"`` connected component (default) or ``"all"``.
        passes: how the k neuron passes run: ``"loop"``, ``"batched"`` or ``"auto"``
            (batched on GPU, loop on CPU, the faster on each).
        batch_size: images per forward pass.
        progress: show a progress bar (default: when there is more than one batch).

    Returns:
        An :class:`Explanation`, or a list of them when ``image`` is a batch.
    """
    start = time.perf_counter()
    bundle = bundle_of(model)
    _check_choice("method", method, METHODS)
    _check_choice("rank_grad", rank_grad, RANK_GRADS)
    _check_choice("passes", passes, PASSES)
    d_combine, d_components, d_sigma = METHOD_DEFAULTS[method]
    combine = combine if combine is not None else d_combine
    components = components if components is not None else d_components
    sigma = sigma if sigma is not None else d_sigma
    if method.startswith("fastloc"):
        _check_choice("combine", combine, COMBINES)
    _check_choice("components", components, boxes.COMPONENTS)
    _check_int("k", k, 1)
    _check_int("kmax", kmax, k if method == "fastloc_rescored" else 1, "at least k=%d" % k)
    _check_int("batch_size", batch_size, 1)
    if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise ValueError(f"threshold={threshold!r} must be a fraction of the map's maximum in [0, 1]")
    if sigma is not None and not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"sigma={sigma!r} must be a non-negative number of pixels")

    images, conversions = load_batch_info(image, bundle.input_size)
    n = images.shape[0]
    targets = _targets(bundle, target, n)
    layer_ref = None
    if method in _LAYER_METHODS:
        layer_ref = _layer(bundle, layer, images[:1])
    params = {
        "k": k,
        "kmax": kmax,
        "rank_grad": rank_grad,
        "combine": combine,
        "sigma": sigma,
        "threshold": float(threshold),
        "components": components,
        "passes": passes if passes != "auto" else ("loop" if bundle.device.type == "cpu" else "batched"),
    }
    if not method.startswith("fastloc"):
        params = {key: params[key] for key in ("sigma", "threshold", "components")}

    chunks = range(0, n, batch_size)
    show = progress if progress is not None else len(chunks) > 1
    if show:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"explain {method}", unit="batch")
    results: list[Explanation] = []
    for s in chunks:
        results += _explain_chunk(
            bundle, images[s : s + batch_size], targets[s : s + batch_size], method, layer_ref, params
        )
    results = [  # how each file / PIL image / read_image result was converted (issue 14)
        r if c is None else r.replace(params={**r.params, "image": c.to_dict()}) for r, c in zip(results, conversions)
    ]
    if not is_batch(image):
        return results[0].replace(time_s=time.perf_counter() - start)
    return results


def _explain_chunk(bundle, images, targets, method, layer_ref, params) -> list[Explanation]:
    t0 = time.perf_counter()
    model = bundle.model
    with preserved(model):  # also leaves inference mode, so x is a normal tensor
        x = bundle.preprocess(images.to(bundle.device)).detach()
        if method.startswith("fastloc"):
            k_pass = params["kmax"] if method == "fastloc_rescored" else params["k"]
            npass = neuron_pass(
                model, x, layer_ref, targets, k_pass, params["rank_grad"], params["passes"], as_logits
            )
            logits, tgt, mode, timings = npass.logits, npass.targets, npass.mode, dict(npass.timings)
            maps, rows = None, _fastloc_maps(bundle, x, npass, method, params, timings)
        else:
            t = time.perf_counter()
            with torch.no_grad():
                logits = as_logits(model(x)).detach()
            tgt = torch.tensor(
                [int(logits[i].argmax()) if v is None else v for i, v in enumerate(targets)], device=logits.device
            )
            timings = {"forward": time.perf_counter() - t}
            t = time.perf_counter()
            mode = None
            if method == "gradcam":
                attr = baselines.gradcam(model, x, layer_ref[1], tgt, as_logits, layer_ref[0])
            elif method == "guided_backprop":
                attr, mode = baselines.guided_backprop(model, x, tgt, as_logits)
            else:
                attr, mode = baselines.guided_gradcam(model, x, layer_ref[1], tgt, as_logits, layer_ref[0])
            timings["attribution"] = time.perf_counter() - t
            maps = attr.float().mean(dim=1).clamp(min=0).cpu().numpy().astype(np.float32)
            rows = [{} for _ in range(len(images))]
    if mode is not None:
        warn_untreated(mode.untreated | untreated_activation_modules(model), mode.treated)
    probs = torch.softmax(logits.float(), dim=1).cpu()
    elapsed = (time.perf_counter() - t0) / len(images)
    out = []
    for i in range(len(images)):
        sigma = params["sigma"]
        sal = rows[i].pop("saliency", None)
        if sal is None:
            sal = boxes.normalize(boxes.smooth(maps[i], default_sigma(maps[i].shape) if sigma is None else sigma))
        top = probs[i].topk(min(5, probs.shape[1]))
        out.append(
            Explanation(
                method=method,
                target=int(tgt[i]),
                target_name=_name(bundle, int(tgt[i])),
                top5=tuple(
                    Prediction(int(j), _name(bundle, int(j)), float(p)) for p, j in zip(top.values, top.indices)
                ),
                layer=layer_ref[0] if layer_ref else None,
                saliency=sal,
                box=boxes.map_to_box(sal, params["threshold"], params["components"]),
                image=to_numpy_image(images[i]),
                time_s=elapsed,
                timings={key: v / len(images) for key, v in timings.items()},
                params=dict(params),
                **rows[i],
            )
        )
    return out


def _fastloc_maps(bundle, x, npass, method, params, timings):
    """Per image: the neuron maps, records and combined saliency of a fastloc method."""
    t = time.perf_counter()
    all_maps = grads_to_maps(npass.input_grads)  # N x kmax x H x W
    class_maps = npass.class_map.float().cpu().numpy()
    rows = []
    for i in range(all_maps.shape[0]):
        order = list(range(all_maps.shape[1]))
        rescored = None
        if method == "fastloc_rescored":
            scores = rescore(bundle.model, x[i : i + 1], blobs(all_maps[i]), int(npass.targets[i]), as_logits)
            order = sorted(order, key=lambda j: (-scores[j], j))[: params["k"]]
            rescored = [float(scores[j]) for j in order]
        neurons = neurons_of(npass, i, order, rescored)
        maps = all_maps[i, order]
        cam = boxes.normalize(class_maps[i])
        sal = combine_maps(
            maps, rule=params["combine"], scores=[nn_.score for nn_ in neurons], sigma=params["sigma"], class_map=cam
        )
        rows.append(
            {"neurons": neurons, "neuron_maps": maps, "layer_shape": npass.layer_shape, "saliency": sal, "class_map": cam}
        )
    timings["maps"] = time.perf_counter() - t
    return rows


def _name(bundle: ModelBundle, index: int) -> str:
    return bundle.class_names[index] if index < len(bundle.class_names) else f"class {index}"


def _targets(bundle: ModelBundle, target, n: int) -> list[int | None]:
    if isinstance(target, (torch.Tensor, np.ndarray)) and target.ndim == 1:
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} images; give one per image or a single value")
        return [None if t is None else bundle.class_index(t) for t in target]
    return [None if target is None else bundle.class_index(target)] * n


def _layer(bundle: ModelBundle, layer, probe_images: torch.Tensor) -> tuple[str, nn.Module]:
    if layer is None:
        if bundle.default_layer is None:
            x = bundle.preprocess(probe_images.to(bundle.device))
            bundle.default_layer = default_layer(bundle.model, x)
        layer = bundle.default_layer
    return resolve_layer(bundle.model, layer)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_int(name: str, value, minimum: int, what: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be {what or f'at least {minimum}'}")
