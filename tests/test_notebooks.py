"""The four notebooks execute top to bottom (nbclient, a fresh python3 kernel each) and
are committed with their outputs stripped."""

from __future__ import annotations

import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = [
    "01_quickstart.ipynb",
    "02_compare_methods.ipynb",
    "03_class_query.ipynb",
    "04_debug_a_model.ipynb",
]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def test_all_notebooks_are_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped_with_kernelspec(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"] == KERNELSPEC
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name}: outputs not stripped"
            )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    # One torch thread in the kernels unless told otherwise: on a shared 2-core machine two
    # OpenMP threads per process made explain() 6 to 20x slower (0.7 s -> 4 to 12 s for
    # fastloc at a load average of 10), and notebook 03 took 114 s instead of 23 s.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.perf_counter()
    # cwd = a scratch dir, so anything a notebook writes stays out of the repository
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    elapsed = time.perf_counter() - start
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    # every widget cell produced a widget view
    widget_outputs = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widget_outputs, f"{name}: no widget was displayed"
    print(f"{name}: {elapsed:.1f} s")
