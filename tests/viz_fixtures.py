"""Hand-built explanations for the plot, report and widget tests (no model needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import data

from fastloc_viz.core.maps import map_to_box, normalize, smooth
from fastloc_viz.core.results import Explanation, Neuron, Prediction

H = W = 224


def photo(size: int = H) -> np.ndarray:
    """Chelsea the cat, ``size x size x 3`` float32 in [0, 1]."""
    img = Image.fromarray(data.chelsea()).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def neuron_maps(k: int = 5, seed: int = 0, size: int = H) -> np.ndarray:
    """``k x size x size`` sparse blob maps in [0, 1], one blob per neuron, at distinct places."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    maps = []
    for i in range(k):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.06, 0.14) * size
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        sparse = blob * (rng.random((size, size)) > 0.7)
        maps.append(normalize(sparse))
    return np.stack(maps).astype(np.float32)


def explanation(
    method: str = "fastloc", k: int = 5, seed: int = 0, target: int = 281
) -> Explanation:
    """A synthetic explanation shaped like a real one (EfficientNet-Lite0, 14 x 14 layer)."""
    rng = np.random.default_rng(seed)
    img = photo()
    top5 = (
        Prediction(281, "tabby, tabby cat", 0.62),
        Prediction(282, "tiger cat", 0.21),
        Prediction(285, "Egyptian cat", 0.09),
        Prediction(287, "lynx, catamount", 0.02),
        Prediction(283, "Persian cat", 0.01),
    )
    params = dict(
        k=k, rank_grad="guided", combine="sum", threshold=0.3, sigma=8.0, components="largest"
    )
    if method.startswith("fastloc"):
        maps = neuron_maps(k, seed)
        scores = np.sort(rng.uniform(0.5, 3.0, k))[::-1]
        neurons = tuple(
            Neuron(
                rank=i + 1,
                channel=int(rng.integers(0, 112)),
                y=int(rng.integers(0, 14)),
                x=int(rng.integers(0, 14)),
                score=float(s),
                activation=float(s / 0.4),
                gradient=0.4,
                rescored=(float(5 - i) if method == "fastloc_rescored" else None),
            )
            for i, s in enumerate(scores)
        )
        sal = normalize(smooth(maps.sum(axis=0), 8.0))
    else:
        neurons, maps = None, None
        yy, xx = np.mgrid[0:H, 0:W]
        sal = normalize(
            np.exp(-((yy - 120) ** 2 + (xx - 100) ** 2) / (2 * 40.0**2)) + 0.1 * rng.random((H, W))
        )
    name = {281: "tabby, tabby cat", 282: "tiger cat"}.get(target, f"class {target}")
    return Explanation(
        method=method,
        target=target,
        target_name=name,
        top5=top5,
        layer="_blocks.10" if method != "guided_backprop" else None,
        saliency=sal.astype(np.float32),
        box=map_to_box(sal, 0.3),
        image=img,
        time_s=0.15 + 0.01 * seed,
        timings={"forward": 0.02, "backward": 0.03},
        params=params,
        neurons=neurons,
        neuron_maps=maps,
        layer_shape=(112, 14, 14),
    )
