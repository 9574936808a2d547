"""The one entry point, :func:`explain`: check the arguments, batch the images, run the
method from the registry (:mod:`fastloc_viz.methods`), and build each :class:`Explanation`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import maps as M
from ..core.checks import check_int
from ..core.results import Explanation, Prediction
from ..engine.guided import untreated_activation_modules, warn_untreated
from ..imaging.batch import is_batch, load_batch_sizes
from ..imaging.decode import to_numpy_image
from ..model.bundle import ModelBundle, as_logits, bundle_of
from ..model.layers import default_layer, resolve_layer
from ..model.state import preserved
from . import Context, Method, get_method

log = logging.getLogger("fastloc_viz")


def explain(
    model: ModelBundle | nn.Module,
    image: Any,
    *,
    method: str = "fastloc",
    target: int | str | None | Sequence[int | str | None] = None,
    layer: str | nn.Module | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
    **params: Any,
) -> Explanation | list[Explanation]:
    """Explain a classifier's decision for one image or a batch.

    Args:
        model: a :class:`ModelBundle` from :func:`load_model`, or an ``nn.Module`` (then
            ImageNet normalization and numbered class names are assumed).
        image: a path, PIL image, NumPy array or tensor in ``[0, 1]`` (see
            :mod:`fastloc_viz.imaging.batch`), or a list / 4-D batch of them.
        method: a name in :data:`fastloc_viz.METHODS`: fastloc and fastloc_rescored, Grad-CAM,
            guided backprop and guided Grad-CAM, the CAM family and four pixel attributions
            (all fourteen with their parameters in docs/api.md); more with
            :func:`fastloc_viz.register_method`.
        target: class index, name or widget label (see :mod:`fastloc_viz.model.classes`), ``None``
            for the top-1 prediction (a single-logit model: its class; ``"not <name>"``
            explains the negated logit); for a batch, one value for all or one per image.
        layer: probe layer, a dotted name or a module, for the methods that use one. ``None``
            uses the bundle's ``default_layer``, else a dry run picks (and logs) the last
            stride-32 feature map (Grad-CAM's usual last conv block; ``_blocks.15`` of
            EfficientNet-Lite0). The poster probed a stride-16 map (VGG-16's "layer 11"); on
            EfficientNet-Lite0/1/2 the stride-32 map with the class map localizes better
            (docs/results.md).
        batch_size: inputs per forward pass: images, and for the methods that run many
            copies of each image (Score-CAM's masked inputs, occlusion's windows, integrated
            gradients' steps, SmoothGrad's noisy samples) those copies.
        progress: show a progress bar (default: when there is more than one batch).
        **params: the method's parameters (its ``Params`` dataclass; ``None`` means the
            default). Every method takes ``sigma`` (smoothing in pixels before boxing;
            default 16 px at 224 px, 0 for Grad-CAM), ``threshold`` (box threshold, a
            fraction of the map's maximum; each method's own default, chosen on a development split,
            fastloc's the combine rule's own: ``fv.get_method(method).defaults()``) and ``components`` (``"peak"``: the
            connected component holding the map's peak; ``"largest"``; ``"all"``: one scored
            box per component in ``Explanation.boxes``; ``"merged"``: one box around all).
            An all-zero map gets no box (``box=None``) and a warning. ``fastloc`` also takes ``k`` (5),
            ``rank_grad`` (``"plain"``: class-specific; ``"guided"``: the authors'),
            ``combine`` (``"refine_cam"``, see :mod:`fastloc_viz.methods.combine`) and ``passes``
            (``"auto"``, ``"loop"``, ``"batched"``); ``fastloc_rescored`` also ``kmax`` (``max(10, 2k)``).
            A parameter of another registered method is ignored, so one set of arguments can
            serve several methods; any other name raises ``TypeError``.

    Returns:
        An :class:`Explanation`, or a list of them when ``image`` is a batch.
    """
    start = time.perf_counter()
    bundle = bundle_of(model)
    m = get_method(method)
    p = m.make_params(params)
    check_int("batch_size", batch_size, 1)

    images, conversions, sizes = load_batch_sizes(image, bundle.input_size, bundle.interpolation, bundle.channels)
    n = images.shape[0]
    targets = _targets(bundle, target, n)
    ctx = Context(bundle, _layer(bundle, layer, images[:1]) if m.uses_layer else None, batch_size=batch_size)
    record = m.record(p, ctx)

    chunks = range(0, n, batch_size)
    show = progress if progress is not None else len(chunks) > 1
    if show:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"explain {method}", unit="batch")
    results: list[Explanation] = []
    for s in chunks:
        results += _explain_chunk(ctx, m, p, record, images[s : s + batch_size], targets[s : s + batch_size])
    results = [  # the photo's own size, and how each file / PIL image / read_image result was converted
        r.replace(original_size=s) if c is None else r.replace(original_size=s, params={**r.params, "image": c.to_dict()})
        for r, c, s in zip(results, conversions, sizes)
    ]
    if not is_batch(image):
        return results[0].replace(time_s=time.perf_counter() - start)
    return results


def _explain_chunk(ctx: Context, m: Method, p, record: dict, images, targets) -> list[Explanation]:
    t0 = time.perf_counter()
    bundle = ctx.bundle
    ctx.mode = None
    with preserved(bundle.model):  # also leaves inference mode, so x is a normal tensor
        x = bundle.preprocess(images.to(bundle.device)).detach()
        out = m.run(ctx, x, targets, p)
    if ctx.mode is not None:
        warn_untreated(ctx.mode.untreated | untreated_activation_modules(bundle.model), ctx.mode.treated)
    probs = bundle.probabilities(out.logits.float()).cpu()
    n = len(images)
    elapsed = (time.perf_counter() - t0) / n
    results = []
    for i in range(n):
        row = dict(out.rows[i]) if out.rows is not None else {}
        sal = row.pop("saliency", None)
        if sal is None:
            raw = out.maps[i]
            sal = M.normalize(M.smooth(raw, M.default_sigma(raw.shape) if p.sigma is None else p.sigma))
        target = int(out.targets[i])
        results.append(
            Explanation(
                method=m.name,
                target=target,
                target_name=bundle.class_name(target),
                top5=tuple(Prediction(j, bundle.class_name(j), float(probs[i, j])) for j in bundle.top(probs[i])),
                layer=ctx.layer[0] if ctx.layer else None,
                saliency=sal,
                **M.box_fields(sal, p.threshold, p.components, f"the {m.name} map for {bundle.class_name(target)!r}"),
                image=to_numpy_image(images[i]),
                time_s=elapsed,
                timings={key: v / n for key, v in out.timings.items()},
                params=dict(record),
                probability=float(probs[i, target]),
                output=bundle.output,
                label_threshold=bundle.label_threshold if bundle.output == "sigmoid" else None,
                **row,
            )
        )
    return results


def _targets(bundle: ModelBundle, target, n: int) -> list[int | None]:
    if isinstance(target, (torch.Tensor, np.ndarray)) and target.ndim == 1:
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} images; give one per image or a single value")
        return [bundle.default_target if t is None else bundle.class_index(t) for t in target]
    return [bundle.default_target if target is None else bundle.class_index(target)] * n


def _layer(bundle: ModelBundle, layer, probe_images: torch.Tensor) -> tuple[str, nn.Module]:
    if layer is None:
        if bundle.default_layer is None:
            x = bundle.preprocess(probe_images.to(bundle.device))
            bundle.default_layer = default_layer(bundle.model, x, as_logits=as_logits)
        layer = bundle.default_layer
    return resolve_layer(bundle.model, layer)
