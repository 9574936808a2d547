"""Shared fixtures: tiny hand-set models, the real pretrained model, the shared data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
# ../shared seen from the repository root; FASTLOC_SHARED_DATA points elsewhere (a worktree)
SHARED_DATA = Path(os.environ.get("FASTLOC_SHARED_DATA") or REPO.parent / "shared" / "data" / "imagenet-val-wsol")


STRICT = os.environ.get("FASTLOC_STRICT") == "1" or os.environ.get("CI", "").lower() in ("1", "true", "yes")
"""Under CI (``CI=true``, or ``FASTLOC_STRICT=1`` as ``.ci/run`` sets) a missing data set or
test dependency fails the test instead of skipping it: nothing is left out silently."""


def skip_or_fail(why: str) -> NoReturn:
    """Skip (in a test or at module level) for a missing dependency or data set; under CI
    (:data:`STRICT`) fail instead."""
    if STRICT:
        pytest.fail(f"{why} (under CI a skip is a failure: CI / FASTLOC_STRICT is set)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require(module: str, minversion: str | None = None) -> Any:
    """``pytest.importorskip`` that fails under CI: the module, imported."""
    try:
        return pytest.importorskip(module, minversion=minversion)
    except pytest.skip.Exception as e:
        skip_or_fail(str(e.msg if hasattr(e, "msg") else e))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (restored after): on the shared 2-core machine two
    OpenMP threads made each explain() call many times slower under load (test_notebooks.py)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0, pretrained, offline (the ``lite0`` extra)."""
    from fastloc_viz import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "annotations.csv").exists():
        skip_or_fail(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


class TinyNet(nn.Module):
    """conv -> act -> conv -> act -> (probe) conv -> act -> global pool -> linear, 8x8 inputs.

    ``act`` picks the activation flavour the guided rule must handle: ``"relu"``,
    ``"relu_inplace"``, ``"relu6"``, ``"reused"`` (one ReLU module called three times) or
    ``"functional"`` (``F.relu`` / ``torch.relu`` inside forward).
    """

    def __init__(self, act: str = "relu", seed: int = 0, classes: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.act = act
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if act == "relu":
            self.a1, self.a2, self.a3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        elif act == "relu_inplace":
            self.a1, self.a2, self.a3 = nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.ReLU(inplace=True)
        elif act == "relu6":
            self.a1, self.a2, self.a3 = nn.ReLU6(), nn.ReLU6(inplace=True), nn.ReLU6()
        elif act == "reused":
            self.shared = nn.ReLU(inplace=True)
        elif act != "functional":
            raise ValueError(act)

    def _act(self, i: int, x):
        if self.act == "reused":
            return self.shared(x)
        if self.act == "functional":
            return F.relu(x) if i % 2 else torch.relu(x)
        return getattr(self, f"a{i}")(x)

    def forward(self, x):
        x = self._act(1, self.conv1(x))
        x = self._act(2, self.conv2(x))
        x = self._act(3, self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


ACTS = ("relu", "relu_inplace", "relu6", "reused", "functional")


@pytest.fixture(params=ACTS)
def tiny(request) -> TinyNet:
    return TinyNet(request.param).eval()


def model_state(model: nn.Module) -> dict:
    """Everything explain() promises to leave untouched."""
    from fastloc_viz.model.state import hook_counts

    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "hooks": hook_counts(model),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["hooks"] == after["hooks"]
    assert before["training"] == after["training"]
    assert before["inplace"] == after["inplace"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grad_ids"] == after["grad_ids"]
    for a, b in zip(before["grad"], after["grad"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["params"].keys() == after["params"].keys()
    for k in before["params"]:
        assert torch.equal(before["params"][k], after["params"][k]), k


REQUIRE_BROWSER = os.environ.get("FASTLOC_REQUIRE_BROWSER") == "1" or STRICT


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """One Jupyter server for every browser test (JupyterLab and Notebook 7); skipped
    without Chromium / Playwright / JupyterLab / Notebook 7, a failure under CI."""
    from browser_support import missing, serve

    why = missing()
    if why:
        if REQUIRE_BROWSER:
            pytest.fail(f"the browser tests must run here (FASTLOC_REQUIRE_BROWSER / CI) but {why}")
        pytest.skip(why)
    with serve(tmp_path_factory.mktemp("lab")) as info:
        yield info
