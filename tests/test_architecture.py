"""The import graph flows one way (docs/architecture.md), and no module grows past its size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastloc_viz"

# The sub-packages from the bottom up. A module may import from its own package and from
# packages of a lower rank only; neurons, evaluation and collection share a rank, so they never
# import each other.
RANKS = {
    "core": 0,
    "imaging": 1,
    "model": 2,
    "engine": 3,
    "methods": 4,
    "neurons": 5, "evaluation": 5, "collection": 5,
    "views": 6,
    "widgets": 7,
    "cli": 8,
    "__init__": 9,
}
TOP_LEVEL_MODULES = {"__init__", "cli"}
ENTRY = "__main__.py"
"""A package's ``python -m`` entry is a command line: it ranks with the package entry, so it may
run the CLI (``python -m fastloc_viz.evaluation`` is ``fastloc-viz evaluate``), and it must hold
nothing else (checked below)."""
MAX_LINES = 620


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield rel.parts[0], path


def _exports() -> dict[str, str]:
    """Names the package's ``__init__`` re-exports -> the sub-package defining them."""
    out = {}
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = node.module.split(".")[0]
    return out


def _imports(top: str, path: Path, package: Path = PACKAGE) -> set[str]:
    """The sub-packages (or top-level modules) that ``path`` imports (also inside functions)."""
    exports = _exports()
    in_subpackage = path.parent != package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for n in names:
                if n == "fastloc_viz" and isinstance(node, ast.ImportFrom):
                    found |= {exports.get(a.name, a.name) for a in node.names}
                elif n and n.startswith("fastloc_viz."):
                    found.add(n.split(".")[1])
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        level = node.level - (1 if in_subpackage else 0)
        if level == 0:  # inside the same sub-package
            continue
        if node.module:
            found.add(node.module.split(".")[0])
        else:
            for alias in node.names:
                is_module = (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()
                found.add(alias.name if is_module else exports.get(alias.name, alias.name))
    found.discard(top)
    return found


def test_only_the_entry_and_the_cli_sit_at_the_top():
    assert {p.stem for p in PACKAGE.glob("*.py")} == TOP_LEVEL_MODULES
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(RANKS) - TOP_LEVEL_MODULES


@pytest.mark.parametrize("package", sorted(set(RANKS) - TOP_LEVEL_MODULES))
def test_each_package_says_what_belongs_in_it(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"fastloc_viz/{package}/__init__.py needs a docstring saying what belongs there"
    assert f"\n  {package}/ " in (PACKAGE.parent / "docs" / "architecture.md").read_text(), "docs/architecture.md's tree"


@pytest.mark.parametrize("top, path", list(_modules()), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_imports_flow_one_way(top, path):
    rank = RANKS["__init__"] if path.name == ENTRY else RANKS[top]
    upward = {m: RANKS.get(m) for m in _imports(top, path) if RANKS.get(m, 99) >= rank}
    assert not upward, f"{path.relative_to(PACKAGE)} (rank {RANKS[top]}) imports {upward}: see docs/architecture.md"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob(ENTRY)), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_python_m_entry_only_runs_the_cli(path):
    """No code hides in a ``__main__``: it imports ``sys`` and the CLI's ``main``, and calls it."""
    body = [n for n in ast.parse(path.read_text()).body if not isinstance(n, ast.Expr) or not isinstance(n.value, ast.Constant)]
    imports = {(getattr(n, "module", None), tuple(a.name for a in n.names)) for n in body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imports == {(None, ("sys",)), ("cli", ("main",))}, f"{path.name} imports {imports}"
    assert len(body) == 3, "a python -m entry is two imports and sys.exit(main([...]))"


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the methods, relatively or not, is reported."""
    fake = tmp_path / "fastloc_viz" / "core" / "results.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..methods import get_method\nfrom fastloc_viz.views import plots\nfrom .maps import box\n")
    assert _imports("core", fake, package=tmp_path / "fastloc_viz") == {"methods", "views"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_much_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


MAX_FUNCTION_LINES = 80
def _function_lengths(path: Path, package: Path = PACKAGE) -> dict[str, int]:
    """``"file.py:Class.function"`` -> its lines, ``def`` to last line (nested ones too)."""
    rel = path.relative_to(package).as_posix()
    out = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{rel}:{prefix}{child.name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return out


def test_no_function_is_over_80_lines():
    lengths = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lengths.update(_function_lengths(path))
    long = {f: n for f, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}; split them"


def test_the_function_length_rule_sees_methods_and_nested_functions(tmp_path):
    fake = tmp_path / "fastloc_viz" / "core" / "x.py"
    fake.parent.mkdir(parents=True)
    body = "".join(f"            y = {i}\n" for i in range(85))
    fake.write_text("class A:\n    def f(self):\n        def g():\n" + body + "        return g\n")
    got = _function_lengths(fake, package=tmp_path / "fastloc_viz")
    assert got == {"core/x.py:A.f": 88, "core/x.py:A.f.g": 86}

def test_the_version_has_one_source(capsys):
    """pyproject.toml holds the version; the package and ``fastloc-viz --version`` read it from
    the installed metadata, and no module writes it out again."""
    import importlib.metadata
    import re

    import fastloc_viz
    from fastloc_viz import cli

    declared = re.search(r'^version = "([^"]+)"', (PACKAGE.parent / "pyproject.toml").read_text(), re.M)[1]
    assert fastloc_viz.__version__ == importlib.metadata.version("fastloc-viz") == declared
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastloc-viz {declared}"
    for path in PACKAGE.rglob("*.py"):
        assert declared not in path.read_text(), f"{path.relative_to(PACKAGE)} writes the version out"
