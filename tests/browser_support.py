"""What the real-browser tests share: one Jupyter server (JupyterLab and Notebook 7 from the
same ``jupyter_server``), the apt Chromium driven by Playwright (never a downloaded browser),
a page that records every JavaScript error, Run All, and the report on failure.

The tests are skipped without Chromium, Playwright, JupyterLab or Notebook 7, except under
CI (``FASTLOC_REQUIRE_BROWSER=1``, ``FASTLOC_STRICT=1`` or ``CI=true``), where that fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FASTLOC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    if not pathlib.Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import jupyterlab  # noqa: F401
        import notebook  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install playwright jupyterlab notebook)"
    return None


def _settings(work: pathlib.Path) -> None:
    """Offline (no news, no update checks), and every cell rendered, also off-screen ones, so
    the widgets can be found and measured (JupyterLab and Notebook 7 read the same settings)."""
    for plugin, name, value in (
        ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
        ("notebook-extension", "tracker", {"windowingMode": "none", "autoStartDefaultKernel": True}),
    ):
        folder = work / "settings" / "@jupyterlab" / plugin
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(value))


@contextlib.contextmanager
def serve(work: pathlib.Path) -> Iterator[dict]:
    """A Jupyter server on 127.0.0.1 (random port and token) rooted at ``work``:
    ``{"url", "token", "work"}``; JupyterLab under ``/lab``, Notebook 7 under ``/notebooks``."""
    _settings(work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
        "--ServerApp.port_retries=0", "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # one torch thread per kernel unless told otherwise (on a busy 2-core machine two OpenMP
    # threads per process are many times slower; see test_notebooks.py)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),  # never reopen an earlier run's notebooks
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
                    raise RuntimeError("Jupyter did not start:\n" + (work / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield {"url": url, "token": token, "work": work}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def shutdown_kernels(lab: dict) -> None:
    """End every kernel of the server (one test's kernels must not slow the next)."""
    base, token = lab["url"], lab["token"]
    with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        req = urllib.request.Request(f"{base}/api/kernels/{k['id']}?token={token}", method="DELETE")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(req, timeout=10)


def write_notebook(path: pathlib.Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def watch(page, errors: list[str]) -> None:
    """Record console errors, page errors and failed requests into ``errors``."""
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on(  # name the resource behind a bare "Failed to load resource" line
        "response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
    )


# Notebook 7.6's own noise in this offline setting, not ours: its shortcuts extension reads
# the schema of a plugin it never loaded (a TypeError in notebook_core on every page load),
# a file-browser command it does not register, and its bundled fonts answered 403.
NOTEBOOK7_NOISE = (
    "pageerror: Cannot read properties of undefined (reading 'schema')",
    "pageerror: Command 'filebrowser:open-path' not registered.",
)


def our_errors(errors: list[str]) -> list[str]:
    """``errors`` less :data:`NOTEBOOK7_NOISE` (and the console lines of its 403 fonts)."""
    fonts = [e for e in errors if e.startswith("HTTP 403: ") and "/static/notebook/" in e and e.endswith(".woff2")]
    out = [e for e in errors if e not in NOTEBOOK7_NOISE and e not in fonts]
    for _ in fonts:
        line = "console: Failed to load resource: the server responded with a status of 403 (Forbidden)"
        if line in out:
            out.remove(line)
    return out


def run_all(page, timeout_ms: int = 120_000) -> None:
    """Run > Run All Cells from the menu bar (JupyterLab and Notebook 7 alike), once the
    notebook is shown; a kernel chooser, should one come up, takes the notebook's python3.
    Asked again once if no cell has started 30 s later (a kernel still connecting)."""
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout_ms)
    with contextlib.suppress(Exception):
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=3_000)
    for attempt in range(2):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(
                "[...document.querySelectorAll('.jp-InputPrompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))",
                timeout=30_000,
            )
            return
        except Exception:  # noqa: BLE001 - not started: ask once more
            if attempt:
                raise


def wait_all_ran(page, timeout_ms: int = 300_000) -> None:
    """Every code cell has run: each prompt holds a number (no ``[*]``, no empty one)."""
    page.wait_for_function(
        "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].every(p => /\\[\\d+\\]/.test(p.textContent))",
        timeout=timeout_ms,
    )


def cell_errors(page) -> list[str]:
    """The text of every error output (a traceback) in the notebook."""
    return page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'], "
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    ).all_inner_texts()


def png_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def changed_fraction(before: bytes, after: bytes, level: int = 30) -> float:
    """The fraction of pixels whose colour moved by more than ``level`` (summed over R, G, B)."""
    a, b = png_array(before), png_array(after)
    assert a.shape == b.shape
    return float((np.abs(a - b).sum(axis=2) > level).mean())


@contextlib.contextmanager
def browser_page(lab: dict, tmp_path: pathlib.Path, height: int = 2000) -> Iterator[tuple]:
    """``(page, errors)``: a Chromium page 1600 px wide that records JavaScript errors; an
    exception inside becomes :func:`failure`'s report; the server's kernels end after."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": height})
        watch(page, errors)
        try:
            yield page, errors
        except Exception as err:
            raise failure(page, tmp_path, lab, errors, err) from None
        finally:
            browser.close()
            shutdown_kernels(lab)


def failure(page, tmp_path: pathlib.Path, lab: dict, errors: list[str], err: BaseException) -> AssertionError:
    """An assertion naming what went wrong, with a screenshot and the server log's tail."""
    with contextlib.suppress(Exception):
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
    log = (lab["work"] / "lab.log").read_text()[-3000:]
    return AssertionError(
        f"browser test failed: {err!r:.2000}; screenshot {tmp_path / 'failure.png'}; "
        f"console errors {errors}; Jupyter log tail:\n{log}"
    )
