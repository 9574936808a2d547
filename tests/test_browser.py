"""A real browser: JupyterLab + headless Chromium (Playwright) on 01_quickstart.

Runs all cells, waits for the explorer's plotly figure and neuron cards, unticks a neuron,
and asserts that the rendered combined map changed and that the console shows no
JavaScript error. Skipped when no Chromium / Playwright / JupyterLab is available, unless
``FASTLOC_REQUIRE_BROWSER=1`` (as in CI), which turns the skip into a failure.

Screenshots go to pytest's tmp dir; with ``FASTLOC_UPDATE_SCREENSHOTS=1`` they are written
to ``docs/img/`` instead (that is how the docs' pictures are made).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FASTLOC_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("FASTLOC_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _missing() -> str | None:
    if not pathlib.Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import jupyterlab  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install playwright jupyterlab)"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    why = _missing()
    if why:
        if REQUIRE:
            pytest.fail(f"FASTLOC_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    work = tmp_path_factory.mktemp("lab")
    # a copy: JupyterLab saves outputs into the notebook it runs, the repository's stays clean
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", work / "01_quickstart.ipynb")
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # offline: no news or update checks
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    # render every cell, also off-screen ones, so the widgets can be found and measured
    nb_settings = work / "settings" / "@jupyterlab" / "notebook-extension"
    nb_settings.mkdir(parents=True)
    (nb_settings / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True})
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        "--ServerApp.port_retries=0",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # one torch thread in the kernel unless told otherwise (see test_notebooks.py: on a busy
    # 2-core machine, two OpenMP threads per process are many times slower)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
        # a fresh workspace: never reopen the notebooks of an earlier run (their 404s fail the test)
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        PYTHONPATH=str(ROOT),
    )
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + (work / "lab.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
        yield {"url": url, "token": token, "work": work}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


_WATCH_REDRAW = """(before) => {
  window.__flvT0 = null; window.__flvT1 = null;
  const root = document.querySelector('.fastloc-explorer');
  root.querySelector('.flv-card input[type=checkbox]').addEventListener(
      'click', () => { window.__flvT0 = performance.now(); }, {capture: true, once: true});
  const plot = root.querySelector('.js-plotly-plot');
  const obs = new MutationObserver(() => {
    const img = plot.querySelector('.hm image');
    if (window.__flvT0 !== null && img && img.getAttribute('href') !== before) {
      window.__flvT1 = performance.now(); obs.disconnect();
    }
  });
  obs.observe(plot, {subtree: true, childList: true, attributes: true});
}"""


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _save(png: bytes, out: pathlib.Path, width: int | None = None) -> None:
    """Write a screenshot small: optionally scaled, then palette-quantized PNG."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if width and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    # a 256-colour palette keeps the docs' pictures around 100 kB
    img.quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
    ).save(out, optimize=True)


def test_quickstart_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = (
        ROOT / "docs" / "img" if os.environ.get("FASTLOC_UPDATE_SCREENSHOTS") == "1" else tmp_path
    )
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            page.on(
                "console",
                lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on(  # name the resource behind a bare "Failed to load resource" line
                "response",
                lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
            )
            page.goto(f"{lab['url']}/lab/tree/01_quickstart.ipynb?token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
            # should a kernel chooser still come up, take the notebook's python3
            try:
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=5_000)
            except Exception:  # noqa: BLE001 - no dialog: nothing to dismiss
                pass
            # wait for the kernel, then Run > Run All Cells
            page.wait_for_selector(
                ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
            )
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            explorer = page.locator(".fastloc-explorer")
            explorer.wait_for(state="attached", timeout=240_000)
            cards = explorer.locator(".flv-card")
            page.wait_for_function(
                "document.querySelectorAll('.fastloc-explorer .flv-card').length >= 5",
                timeout=120_000,
            )
            overlay = explorer.locator(".js-plotly-plot").first
            overlay.locator(".hm image").first.wait_for(state="attached", timeout=60_000)
            # every cell done: no "[*]" prompt left
            page.wait_for_function(
                "![...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'))",
                timeout=240_000,
            )
            assert cards.count() == 5
            page.wait_for_timeout(1500)  # let plotly finish drawing

            # issue 10: each card shows where its channel fires, its atlas strip (the notebook
            # passes an atlas) and, once the worker's fv.ablate is done, its probability drop
            first = cards.nth(0)
            assert first.locator("img.flv-act").count() == 1
            strip = first.locator("img.flv-atlas")
            strip.wait_for(state="visible", timeout=30_000)
            assert page.evaluate("el => el.naturalWidth > 0 && el.naturalHeight > 0", strip.element_handle())
            assert first.locator(".flv-atlas-labels").inner_text().strip()
            first.locator(".flv-drop").wait_for(state="attached", timeout=120_000)
            drop_text = first.locator(".flv-drop").inner_text()
            assert "channel off" in drop_text and "drop" in drop_text and "pts" in drop_text, drop_text
            assert float(first.locator(".flv-drop").get_attribute("data-drop")) == pytest.approx(
                float(drop_text.split("drop")[-1].split("pts")[0]) / 100, abs=6e-4
            )
            assert "predicts" in explorer.locator(".flv-without").inner_text() or "Untick" in explorer.locator(
                ".flv-without"
            ).inner_text()
            _save(first.screenshot(), shots / "explorer_card.png")

            explorer.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            before = overlay.screenshot()
            href_before = overlay.locator(".hm image").first.get_attribute("href")
            _save(explorer.screenshot(), shots / "explorer.png", width=900)
            _save(before, shots / "explorer_map.png")

            # untick neuron #1: the map is rebuilt from the cached maps and redrawn
            # time the redraw inside the page: from the click event to the new heatmap image
            page.evaluate(_WATCH_REDRAW, href_before)
            t0 = time.perf_counter()
            cards.nth(0).locator("input[type=checkbox]").uncheck()
            page.wait_for_function(
                "h => { const i = document.querySelector('.fastloc-explorer .js-plotly-plot .hm image');"
                " return i && i.getAttribute('href') !== h; }",
                arg=href_before,
                timeout=30_000,
                polling=10,
            )
            redraw_ms = (time.perf_counter() - t0) * 1000
            page.wait_for_function("window.__flvT1 !== null", timeout=10_000)
            in_page = page.evaluate("window.__flvT1 - window.__flvT0")
            page.wait_for_timeout(300)
            status = explorer.locator(".flv-stat").first.inner_text()
            print(
                f"click -> redrawn map: {in_page:.0f} ms in the page ({redraw_ms:.0f} ms seen by "
                f"Playwright); kernel side: {status.rsplit('·', 1)[-1].strip()}"
            )
            page.wait_for_timeout(800)
            after = overlay.screenshot()
            _save(explorer.screenshot(), shots / "explorer_toggled.png", width=900)
            _save(after, shots / "explorer_map_toggled.png")
            assert "neurons 4/5" in overlay.inner_text()

            # an expensive change (another class) runs on the widget's worker thread: its
            # updates must reach the page too
            cards_before = cards.all_inner_texts()
            second = explorer.locator(".widget-button", has_text="·").nth(1)
            name = second.inner_text().rsplit(" · ", 1)[0].strip()
            second.click()
            page.wait_for_function(
                "n => { const t = document.querySelector('.fastloc-explorer .js-plotly-plot .gtitle');"
                " return t && t.textContent.includes(n); }",
                arg=name,
                timeout=120_000,
            )
            page.wait_for_timeout(1000)
            assert cards.count() == 5 and cards.all_inner_texts() != cards_before
            assert not explorer.locator(".flv-err").count()
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            log = (lab["work"] / "lab.log").read_text()[-4000:]
            raise AssertionError(
                f"browser test failed; screenshot {tmp_path / 'failure.png'}; "
                f"console errors {errors}; JupyterLab log tail:\n{log}"
            ) from None
        finally:
            browser.close()

    a, b = _png_array(before), _png_array(after)
    assert a.shape == b.shape
    changed = (np.abs(a - b).sum(axis=2) > 30).mean()
    # one neuron of five, under the default combination (the class map raised where the
    # neurons fire): ~0.3 % of the pixels on this photo change visibly; an unchanged figure
    # gives 0
    assert changed > 0.001, (
        f"only {changed:.1%} of the map's pixels changed after unticking a neuron"
    )
    assert not errors, "JavaScript errors in the browser console:\n" + "\n".join(errors)
