"""Deletion and insertion curves (Petsiuk et al. 2018, "RISE"): does the map rank the pixels
the model needs first?

Rank the pixels of the image (at the model's input size) by the map, highest first (ties:
the earlier pixel in row-major order first). In ``steps`` equal steps, **deletion** replaces
the top-ranked pixels of the image by a baseline image and follows the probability of the
target class (the bundle's softmax, or the label's sigmoid); **insertion** starts from the baseline and puts the image's top-ranked
pixels back. Step ``k`` changes the first ``round(k * H * W / steps)`` pixels (every
channel of each). A faithful map makes the deletion curve fall fast (low area) and the
insertion curve rise fast (high area). The area under each curve is the trapezoid rule over
the fraction of pixels changed, ``[0, 1]``, so it is a fraction in ``[0, 1]``.

Baselines (``baseline=``):

* ``"mean"``: every pixel the normalization's mean colour (``bundle.mean``; 0.5 grey for
  EfficientNet-Lite0), which is 0 after normalization. RISE's deletion substrate, and the
  default for deletion.
* ``"blur"``: the image blurred by an 11 x 11 Gaussian kernel, sigma 5 px, reflect padding
  (RISE's ``gkern(11, 5)``), the default for insertion.
* an ``H x W x 3`` array or ``3 x H x W`` tensor in ``[0, 1]``: your own.

Batched: the ``steps + 1`` images of a curve go through the model ``batch_size`` at a time,
inside :func:`fastloc_viz.model.state.preserved`, so the user's model is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checks import check_int
from ..core.results import Explanation
from ..imaging.batch import load_batch
from ..model.bundle import ModelBundle, as_logits, bundle_of
from ..model.state import preserved

__all__ = [
    "BASELINES",
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "Curve",
    "baseline_image",
    "deletion_curve",
    "faithfulness",
    "faithfulness_of",
    "insertion_curve",
    "pixel_order",
    "step_counts",
]

BASELINES = ("mean", "blur")
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
KINDS = ("deletion", "insertion")


@dataclass(frozen=True)
class Curve:
    """One deletion or insertion curve.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``steps + 1`` fractions of the pixels changed, ``0 .. 1``.
        probs: the target class's probability at each fraction (softmax, or its sigmoid).
        target: the class followed.
        baseline: the baseline's name (``"array"`` for one given as an array).
    """

    kind: str
    fractions: np.ndarray
    probs: np.ndarray
    target: int
    baseline: str

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoid rule over ``fractions``), in ``[0, 1]``."""
        return auc(self.fractions, self.probs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fractions": self.fractions.tolist(), "probs": self.probs.tolist(),
                "target": self.target, "baseline": self.baseline, "auc": self.auc}


def auc(fractions: np.ndarray, probs: np.ndarray) -> float:
    """Trapezoid area under ``probs`` over ``fractions``."""
    x, y = np.asarray(fractions, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, highest map value first; ties keep row-major order (stable)."""
    flat = np.asarray(saliency, dtype=np.float64).ravel()
    return np.argsort(-flat, kind="stable")


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Pixels changed after each of ``0 .. steps`` steps: ``round(k * n_pixels / steps)``."""
    check_int("steps", steps, 1)
    return np.rint(np.arange(steps + 1) * n_pixels / steps).astype(np.int64)


def baseline_image(bundle: ModelBundle, image: torch.Tensor, baseline: Any) -> torch.Tensor:
    """The ``C x H x W`` baseline in ``[0, 1]`` for ``image`` (``C x H x W`` in ``[0, 1]``);
    see the module's docstring for the choices."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return torch.tensor(bundle.mean, dtype=image.dtype)[:, None, None].expand_as(image).clone()
        if baseline == "blur":
            from torchvision.transforms.functional import gaussian_blur

            return gaussian_blur(image[None], [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])[0]
        raise ValueError(f"baseline={baseline!r} is not one of {BASELINES} or an image array")
    b = torch.as_tensor(np.asarray(baseline) if not isinstance(baseline, torch.Tensor) else baseline)
    b = b.to(image.dtype)
    if b.dim() == 3 and b.shape[-1] == 3 and b.shape[0] != 3:
        b = b.permute(2, 0, 1)
    if tuple(b.shape) != tuple(image.shape):
        raise ValueError(f"baseline has shape {tuple(b.shape)}; the image at input size is {tuple(image.shape)}")
    return b


def _map_at(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    sal = np.asarray(saliency, dtype=np.float64)
    if sal.ndim == 3:  # C x H x W or H x W x C attribution: mean over channels
        sal = sal.mean(axis=0 if sal.shape[0] in (1, 3) else -1)
    if sal.ndim != 2:
        raise ValueError(f"the map must be H x W, got shape {sal.shape}")
    if sal.shape != tuple(size):
        t = torch.from_numpy(sal)[None, None]
        sal = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return sal


def _curve_images(image: torch.Tensor, base: torch.Tensor, order: np.ndarray, counts: np.ndarray,
                  kind: str) -> torch.Tensor:
    """``len(counts) x C x H x W``: the image with the first ``counts[k]`` ranked pixels
    taken from ``base`` (deletion) or the base with them taken from the image (insertion)."""
    h, w = image.shape[-2:]
    rank = np.empty(h * w, dtype=np.int64)
    rank[order] = np.arange(h * w)
    rank_t = torch.from_numpy(rank).view(1, 1, h, w)
    changed = rank_t < torch.from_numpy(counts).view(-1, 1, 1, 1)  # K x 1 x H x W
    src, dst = (base, image) if kind == "deletion" else (image, base)
    return torch.where(changed, src[None], dst[None])


def _probs(bundle: ModelBundle, images: torch.Tensor, target: int | None, batch_size: int,
           bar=None) -> tuple[np.ndarray, int]:
    """The probability of ``target`` (``None``: the top-1 class of ``images[0]``)."""
    out = []
    with preserved(bundle.model), torch.no_grad():
        for s in range(0, len(images), batch_size):
            logits = as_logits(bundle.model(bundle.preprocess(images[s : s + batch_size])))
            p = bundle.probabilities(logits.double())  # float64: exact against a float64 reference
            if target is None:
                target = int(p[0].argmax())
            out.append(p[:, target].double().cpu())
            if bar is not None:
                bar.update(len(p))
    return torch.cat(out).numpy(), int(target)


def _prepare(model, image, saliency) -> tuple[ModelBundle, torch.Tensor, np.ndarray]:
    bundle = bundle_of(model)
    img = load_batch(image, bundle.input_size, bundle.interpolation, bundle.channels)
    if img.shape[0] != 1:
        raise ValueError(f"one image at a time, got a batch of {img.shape[0]}")
    img = img[0].to(torch.float64 if bundle.dtype == torch.float64 else torch.float32)
    return bundle, img, _map_at(saliency, img.shape[-2:])


def _baseline_name(baseline: Any) -> str:
    return baseline if isinstance(baseline, str) else "array"


def faithfulness(
    model: ModelBundle | torch.nn.Module,
    image: Any,
    saliency: np.ndarray,
    *,
    target: int | str | None = None,
    steps: int = 16,
    deletion_baseline: Any = "mean",
    insertion_baseline: Any = "blur",
    kinds: tuple[str, ...] = KINDS,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Curve]:
    """The deletion and insertion curves of one map for one image.

    Args:
        model: a :class:`~fastloc_viz.ModelBundle` or an ``nn.Module``.
        image: one image in any form :func:`fastloc_viz.explain` takes; it is resized to the
            model's input size, as ``explain`` does.
        saliency: the map, ``H x W`` (resized bilinearly to the input size if it differs;
            a ``C x H x W`` attribution is averaged over channels).
        target: the class to follow (index, name or label); ``None``: the top-1 class of the
            unchanged image.
        steps: number of equal steps from 0 to every pixel changed (``steps + 1`` points).
        deletion_baseline, insertion_baseline: ``"mean"``, ``"blur"`` or an image; see the
            module's docstring.
        kinds: which curves, a subset of ``("deletion", "insertion")``.
        batch_size: images per forward pass.
        progress: a tqdm bar over the forward passes.

    Returns:
        ``{"deletion": Curve, "insertion": Curve}`` (the kinds asked for). The unchanged image
        is one point of both curves and goes through the model once.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    check_int("batch_size", batch_size, 1)
    bundle, img, sal = _prepare(model, image, saliency)
    tgt = bundle.default_target if target is None else bundle.class_index(target)
    counts = step_counts(img.shape[-1] * img.shape[-2], steps)
    order = pixel_order(sal)
    fractions = counts / counts[-1]
    baselines = {"deletion": deletion_baseline, "insertion": insertion_baseline}
    # the unchanged image first (it sets the target when none is given), then each curve's
    # other points: deletion's 1..steps, insertion's 0..steps-1
    batches = [img[None]]
    for kind in kinds:
        base = baseline_image(bundle, img, baselines[kind])
        idx = counts[1:] if kind == "deletion" else counts[:-1]
        batches.append(_curve_images(img, base, order, idx, kind))
    images = torch.cat(batches)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc="faithfulness", unit="img")
    try:
        probs, tgt = _probs(bundle, images, tgt, batch_size, bar)
    finally:
        if bar is not None:
            bar.close()
    full, rest = probs[0], probs[1:]
    out: dict[str, Curve] = {}
    for i, kind in enumerate(kinds):
        part = rest[i * steps : (i + 1) * steps]
        p = np.concatenate([[full], part]) if kind == "deletion" else np.concatenate([part, [full]])
        out[kind] = Curve(kind, fractions, p, tgt, _baseline_name(baselines[kind]))
    return out


def deletion_curve(model, image, saliency, *, target=None, steps: int = 16, baseline: Any = "mean",
                   batch_size: int = 16) -> Curve:
    """The deletion curve alone; see :func:`faithfulness`."""
    return faithfulness(model, image, saliency, target=target, steps=steps, deletion_baseline=baseline,
                        kinds=("deletion",), batch_size=batch_size)["deletion"]


def insertion_curve(model, image, saliency, *, target=None, steps: int = 16, baseline: Any = "blur",
                    batch_size: int = 16) -> Curve:
    """The insertion curve alone; see :func:`faithfulness`."""
    return faithfulness(model, image, saliency, target=target, steps=steps, insertion_baseline=baseline,
                        kinds=("insertion",), batch_size=batch_size)["insertion"]


def faithfulness_of(model, explanations: Explanation | dict[str, Explanation], **kwargs: Any):
    """:func:`faithfulness` of an :class:`~fastloc_viz.Explanation` (its image, map and
    target), or of a ``{method: Explanation}`` mapping (then ``{method: {kind: Curve}}``).
    ``kwargs`` go to :func:`faithfulness`."""
    if isinstance(explanations, Explanation):
        e = explanations
        return faithfulness(model, e.image, e.saliency, target=e.target, **kwargs)
    return {name: faithfulness_of(model, e, **kwargs) for name, e in explanations.items()}
