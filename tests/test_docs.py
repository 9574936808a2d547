"""The docs name only code that exists: every ``fastloc_viz.x.y`` dotted path and every
``fastloc_viz/x/y.py`` file in README.md and docs/*.md resolves, so the docs cannot drift
from the package's layout again (docs/architecture.md's tree included)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

DOTTED = re.compile(r"(?<![\w./-])fastloc_viz(?:\.[A-Za-z_]\w*)+")
FILE = re.compile(r"(?<![\w./-])fastloc_viz/(?:[A-Za-z_]\w*/)*[A-Za-z_]\w*\.py\b")
# ``methods/combine.py``: a module named by its sub-package (docs/architecture.md's way)
SUBPACKAGES = sorted(p.name for p in (REPO / "fastloc_viz").iterdir() if (p / "__init__.py").is_file())
IN_PACKAGE = re.compile(rf"(?<![\w./-])(?:{'|'.join(SUBPACKAGES)})/\w+\.py\b")
ALIAS = re.compile(r"(?<![\w.])fv(?:\.[A-Za-z_]\w*)+")  # import fastloc_viz as fv


def resolve(dotted: str) -> object:
    """The object a dotted path names: the longest importable module prefix, then attributes.
    ``LookupError`` names the part that is missing."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError as err:
            if err.name is not None and not ".".join(parts[:n]).startswith(err.name):
                raise  # the module exists but imports something missing
            continue
        for i, attr in enumerate(parts[n:], start=n):
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:i])} has no {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no module {parts[0]!r}")


def _mentions(pattern: re.Pattern) -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for m in pattern.finditer(page.read_text()):
            found.add((page.relative_to(REPO).as_posix(), m.group(0).rstrip(".")))
    return sorted(found)


@pytest.mark.parametrize(
    "page, dotted", _mentions(DOTTED) + [(p, "fastloc_viz" + d[2:]) for p, d in _mentions(ALIAS)]
)
def test_each_dotted_path_in_the_docs_exists(page, dotted):
    try:
        resolve(dotted)
    except LookupError as err:
        pytest.fail(f"{page} names {dotted}, which does not exist: {err}")


@pytest.mark.parametrize("page, path", _mentions(FILE) + [(p, "fastloc_viz/" + f) for p, f in _mentions(IN_PACKAGE)])
def test_each_file_path_in_the_docs_exists(page, path):
    assert (REPO / path).is_file(), f"{page} names {path}, which does not exist"


def _tree_files() -> list[str]:
    """The ``.py`` files docs/architecture.md's folder trees list, as paths in the repo: a
    tree starts at ``fastloc_viz/...``, a two-space ``pkg/`` line opens a folder, and a line's
    leading ``name.py`` names (two spaces in: the tree's own folder; four: the open one)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    out = []
    for block in re.findall(r"```\n(fastloc_viz/.*?)```", text, re.S):
        lines = block.splitlines()
        base = lines[0].split()[0]
        folder = ""
        for line in lines[1:]:
            head = re.match(r"  (\w+)/ ", line)
            if head:
                folder = head.group(1) + "/"
            names = re.match(r"( +)((?:\w+\.py,? *)+)", line)
            if names:
                inner = folder if len(names.group(1)) > 2 else ""
                out += [base + inner + n for n in re.findall(r"\w+\.py", names.group(2))]
    return out


def test_architecture_tree_names_real_files():
    files = _tree_files()
    assert len(files) > 40 and "fastloc_viz/core/results.py" in files and "fastloc_viz/cli.py" in files
    missing = [f for f in files if not (REPO / f).is_file()]
    assert not missing, f"docs/architecture.md's tree names files that do not exist: {missing}"


def test_the_checks_catch_a_wrong_path():
    """The resolver itself: a moved module, a missing attribute and a missing file are caught."""
    assert resolve("fastloc_viz.methods.combine.RULES") is importlib.import_module("fastloc_viz").RULES
    assert resolve("fastloc_viz.evaluation") is importlib.import_module("fastloc_viz.evaluation")
    for wrong in ("fastloc_viz.explaining.explain", "fastloc_viz.core.results.NoSuchThing", "fastloc_viz.hooks"):
        with pytest.raises(LookupError):
            resolve(wrong)
    text = "see `fastloc_viz/hooks.py`, `model/hooks.py` and fastloc_viz.baselines.gradcam, or fastloc_viz.core.maps."
    assert [m.group(0) for m in FILE.finditer(text)] == ["fastloc_viz/hooks.py"]
    assert [m.group(0) for m in IN_PACKAGE.finditer(text)] == ["model/hooks.py"]
    assert [m.group(0).rstrip(".") for m in DOTTED.finditer(text)] == ["fastloc_viz.baselines.gradcam", "fastloc_viz.core.maps"]
    assert [m.group(0) for m in ALIAS.finditer("e = fv.explain(x); fv.RULES.keys, xfv.a")] == ["fv.explain", "fv.RULES.keys"]
