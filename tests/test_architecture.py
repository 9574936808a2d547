"""The import graph flows one way (docs/architecture.md), and no module grows past its size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastloc_viz"

# A module may import only from modules of a lower rank (packages: any of their own modules).
RANKS = {
    "explanation": 0, "version": 0, "checks": 0, "files": 0, "classes": 0,
    "maps": 1, "tokens": 1, "coco": 1, "guided": 1, "ranking": 1, "decode": 1, "data": 1, "neuron_views": 1,
    "hooks": 2, "timm_models": 2, "review": 2, "windowing": 2, "metrics": 2, "combine": 2, "raster": 2, "image_sources": 2,
    "formats": 3, "models": 3, "baselines": 3, "neuron_cards": 3,
    "readers": 4, "fastloc": 4, "ablation": 4,
    "images": 5,
    "methods": 6, "faithfulness": 6,
    "explaining": 7,
    "plots": 8, "evaluate": 8, "atlas": 8, "sanity": 8,
    "plots_faithfulness": 8.5,
    "report": 9, "evaluate_boxfree": 9, "collection": 9,
    "widgets": 10,
    "cli": 11,
    "__init__": 12,
}
MAX_LINES = 620


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield rel.parts[0], path


def _exports() -> dict[str, str]:
    """Names the package's ``__init__`` re-exports -> the module defining them."""
    out = {}
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = node.module.split(".")[0]
    return out


def _imports(top: str, path: Path) -> set[str]:
    """The top-level package modules that ``path`` imports (also inside functions)."""
    exports = _exports()
    in_subpackage = path.parent != PACKAGE
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found |= {n.split(".")[1] for n in names if n and n.startswith("fastloc_viz.")}
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        level = node.level - (1 if in_subpackage else 0)
        if level == 0:  # inside the same subpackage
            continue
        if node.module:
            found.add(node.module.split(".")[0])
        else:
            for alias in node.names:
                found.add(alias.name if (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()
                          else exports.get(alias.name, alias.name))
    found.discard(top)
    return found


def test_every_module_has_a_rank():
    assert {top for top, _ in _modules()} <= set(RANKS)


@pytest.mark.parametrize("top, path", list(_modules()), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_imports_flow_one_way(top, path):
    upward = {m: RANKS.get(m) for m in _imports(top, path) if RANKS.get(m, 99) >= RANKS[top]}
    assert not upward, f"{path.relative_to(PACKAGE)} (rank {RANKS[top]}) imports {upward}: see docs/architecture.md"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_much_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
