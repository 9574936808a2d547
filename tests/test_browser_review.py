"""BoxReview in a real browser (issue 12): accept one box, reject one, restart the kernel,
and find both decisions kept. Same recipe and skip rules as ``test_browser.py`` (the session's
Jupyter server with a token, the apt Chromium driven by Playwright; no browser is ever
downloaded)."""

from __future__ import annotations

import json
import os

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, shutdown_kernels

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = '''
import json, os
from PIL import Image
from fastloc_viz.collection import coco
rows = []
for i, (w, h) in enumerate([(300, 200), (120, 240), (200, 200)]):
    Image.new("RGB", (w, h), (40 * i, 120, 200 - 50 * i)).save(f"p{i}.png")
    rows.append({"key": f"p{i}.png", "index": i, "file": f"p{i}.png", "status": "ok", "width": w, "height": h,
                 "target": i % 2, "target_name": "ab"[i % 2], "given": False, "probability": 0.9 - 0.2 * i,
                 "score": 0.9 - 0.2 * i, "kind": "object",
                 "box": [0, 0, 8, 8], "box_original": [10, 10, w // 2, h // 2]})
if not os.path.exists("review-boxes.json"):
    with open("review-boxes.json", "w") as f:
        json.dump(coco.coco_document(rows, ["a", "b"], {"source": os.getcwd()}), f)
print("kernel", os.getpid())
'''
SHOW = '''
from fastloc_viz.widgets import BoxReview
review = BoxReview("review-boxes.json")
review
'''


def _notebook(path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(SHOW)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _run_all(page, restart: bool) -> None:
    """Through the review notebook's own toolbar (menus act on whichever panel has focus)."""
    page.locator(".lm-TabBar-tab", has_text="review.ipynb").first.click()
    panel = page.locator(".jp-NotebookPanel:visible")
    if restart:
        panel.locator("[data-command='notebook:restart-run-all']").first.click()
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=10_000)
    else:
        panel.locator(".jp-InputPrompt").first.click()
        for _ in range(2):
            page.keyboard.press("Shift+Enter")


def _kernel_pid(page) -> str:
    page.wait_for_function(
        "[...document.querySelectorAll('.jp-OutputArea-output')].some(o => o.textContent.includes('kernel '))",
        timeout=180_000)
    text = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "kernel " in t][0]
    return text.split("kernel", 1)[1].split()[0]


def test_box_review_decisions_survive_a_kernel_restart(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    work = lab["work"]
    _notebook(work / "review.ipynb")
    decisions = work / "review-boxes.review.json"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        try:
            page.goto(f"{lab['url']}/lab/workspaces/review/tree/review.ipynb?token={lab['token']}")
            # the lab may also reopen 01_quickstart (the shared fixture's notebook): find ours
            page.locator(".jp-NotebookPanel .jp-Cell", has_text="BoxReview").first.wait_for(timeout=90_000)
            try:
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=5_000)
            except Exception:  # noqa: BLE001 - no kernel chooser
                pass
            page.locator(".lm-TabBar-tab", has_text="review.ipynb").first.click()
            page.wait_for_function(
                "[...document.querySelectorAll('.jp-StatusBar-Widget, .jp-StatusBar-TextItem')]"
                ".some(e => e.textContent.includes('| Idle'))", timeout=120_000)
            _run_all(page, restart=False)
            cards = page.locator(".fastloc-box-review .fastloc-review-card")
            page.wait_for_function(
                "document.querySelectorAll('.fastloc-box-review .fastloc-review-card').length == 3", timeout=180_000)
            first_pid = _kernel_pid(page)
            assert "undecided" in cards.nth(0).inner_text()
            cards.nth(0).locator(".fastloc-review-accept").click()
            page.wait_for_function(
                "document.querySelector('.fastloc-box-review .fastloc-review-card').textContent.includes('accepted')",
                timeout=30_000)
            cards.nth(1).locator(".fastloc-review-reject").click()
            page.wait_for_function(
                "document.querySelectorAll('.fastloc-box-review .fastloc-review-card')[1]"
                ".textContent.includes('rejected')", timeout=30_000)
            saved = json.loads(decisions.read_text())["decisions"]
            assert {f: d["status"] for f, d in saved.items()} == {"p0.png": "accepted", "p1.png": "rejected"}

            _run_all(page, restart=True)
            page.wait_for_function(
                "pid => [...document.querySelectorAll('.jp-OutputArea-output')].some("
                "o => o.textContent.includes('kernel ') && !o.textContent.includes('kernel ' + pid))",
                arg=first_pid, timeout=180_000)
            page.wait_for_function(
                "document.querySelectorAll('.fastloc-box-review .fastloc-review-card').length == 3", timeout=180_000)
            page.wait_for_timeout(500)
            texts = cards.all_inner_texts()
            assert "accepted" in texts[0] and "rejected" in texts[1] and "undecided" in texts[2], texts
            assert "accepted 1 · rejected 1 · undecided 1" in page.locator(".fastloc-box-review").inner_text()
        except Exception as err:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            log = (work / "lab.log").read_text()[-3000:]
            raise AssertionError(
                f"browser test failed: {err!r:.1500}; screenshot {tmp_path / 'failure.png'}; lab log:\n{log}"
            ) from None
        finally:
            browser.close()
            shutdown_kernels(lab)
    assert os.path.exists(decisions)
