"""Static pictures for docs/user-guide.md (plotly figures exported with kaleido).

Needs kaleido and a Chrome/Chromium it can find (``apt-get install chromium``). The
browser screenshots of the widgets come from ``FASTLOC_UPDATE_SCREENSHOTS=1 pytest
tests/test_browser.py``.

    python scripts/docs_figures.py            # writes docs/img/guide_*.png
"""

from __future__ import annotations

import io
import pathlib

from PIL import Image

import fastloc_viz as fv
from fastloc_viz.imaging.batch import collage
from fastloc_viz.methods import select_methods
from fastloc_viz.views import plots

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img"


def save(fig, name: str) -> None:
    img = Image.open(io.BytesIO(fig.to_image(format="png", scale=1))).convert("RGB")
    img.quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
    ).save(OUT / name, optimize=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    bundle = fv.load_model("efficientnet_lite0")
    cat = fv.sample_image("chelsea")
    gt = (28, 8, 224, 224)
    results = {m: fv.explain(bundle, cat, method=m) for m in select_methods()}  # the default five
    save(plots.method_grid(results, gt_box=gt, cell=230, show_time=False), "guide_methods.png")
    save(plots.neuron_grid(results["fastloc"], cell=170), "guide_neurons.png")
    board = collage([fv.sample_image(n) for n in ("chelsea", "coffee", "rocket", "camera")])
    queries = {"Egyptian cat": "chelsea", "espresso": "coffee", "tripod": "camera"}
    save(
        plots.method_grid(
            {f"{c} ({p})": fv.explain(bundle, board, target=c) for c, p in queries.items()},
            cols=3,
            cell=230,
            show_time=False,
        ),
        "guide_class_query.png",
    )


if __name__ == "__main__":
    main()
