"""Render docs/img/readme.png: a photo, FastLoc's combined map and box, and its five neurons.

    .venv/bin/python scripts/readme_figure.py [OUT.png]

Uses EfficientNet-Lite0 (offline) and scikit-image's photos; PIL only, no browser.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw

import fastloc_viz as fv
from fastloc_viz.imaging.batch import collage
from fastloc_viz.views.plots import colorize, neuron_thumbnail


def _panel(e: fv.Explanation) -> Image.Image:
    img = (e.image * 255).astype(np.uint8)
    heat = colorize(e.saliency).astype(np.float32)
    blend = (0.45 * img + 0.55 * heat).astype(np.uint8)
    out = Image.fromarray(blend)
    ImageDraw.Draw(out).rectangle([e.box[0], e.box[1], e.box[2] - 1, e.box[3] - 1], outline=(0, 255, 120), width=3)
    return out


def main(path: str = "docs/img/readme.png") -> None:
    lite0 = fv.load_model("efficientnet_lite0", input_size=(224, 448))
    img = collage([fv.sample_image("chelsea"), fv.sample_image("coffee")], size=224, cols=2)
    cat = fv.explain(lite0, img, target="Egyptian cat")
    cup = fv.explain(lite0, img, target="espresso")
    thumbs = [Image.fromarray(neuron_thumbnail(cat.image, m, size=224)) for m in cat.neuron_maps]
    w = 448 * 3
    canvas = Image.new("RGB", (w, 224 + 8 + 180), "white")
    canvas.paste(Image.fromarray((cat.image * 255).astype(np.uint8)), (0, 0))
    canvas.paste(_panel(cat), (448, 0))
    canvas.paste(_panel(cup), (896, 0))
    for i, t in enumerate(thumbs):
        t = t.resize((int(t.width * 180 / t.height), 180))
        canvas.paste(t, (i * (w // 5), 232))
    draw = ImageDraw.Draw(canvas)
    for x, label in ((4, "input"), (452, "query 'Egyptian cat'"), (900, "query 'espresso'")):
        draw.text((x, 4), label, fill=(255, 255, 255))
    for i, n in enumerate(cat.neurons):
        draw.text((i * (w // 5) + 4, 236), f"#{n.rank} ch {n.channel} score {n.score:.2f}", fill=(255, 255, 255))
    canvas.save(path)
    print(path)


if __name__ == "__main__":
    main(*sys.argv[1:])
