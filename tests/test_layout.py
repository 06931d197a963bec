"""Dependencies point one way: cli -> api -> graph -> (io, align, merge) -> arch -> registry; recipe is pure
data. Every package and every module of the package root is listed (a new one fails until it is)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mergeflow"
ALLOWED = {
    "recipe": {"recipe", "errors", "files", "patterns"},
    "merge": {"merge", "registry", "errors"},
    "align": {"align", "arch", "registry", "errors"},
    "arch": {"arch", "registry", "errors"},
    "io": {"io", "errors", "", "files", "patterns", "progress"},
    "graph": {
        "graph",
        "io",
        "merge",
        "align",
        "arch",
        "recipe",
        "registry",
        "errors",
        "",
        "learn",
        "stats",
        "files",
        "patterns",
        "tokenizer",
        "progress",
        "deepalign",
    },
    "tokenizer": {"tokenizer", "io", "arch", "recipe", "errors", "files"},
    "moe": {"moe", "graph", "io", "recipe", "merge", "align", "stats", "tokenizer", "errors", "files"},
    "learn": {"learn", "align", "arch", "stats", "errors"},
    # Deep-Align and the mlp family: the assignment solver of align/, nothing of the transformer layout
    "deepalign": {"deepalign", "align", "errors", "progress"},
    "stats": {"stats", "io", "errors", "files", "progress"},
    "eval": {"eval", "api", "align", "arch", "io", "stats", "errors"},
    "cli": {
        "cli",
        "",
        "api",
        "align",
        "arch",
        "errors",
        "eval",
        "graph",
        "io",
        "merge",
        "moe",
        "progress",
        "recipe",
        "search",
        "stats",
        "files",
        "deepalign",
    },
    "search": {
        "search",
        "graph",
        "recipe",
        "merge",
        "align",
        "eval",
        "stats",
        "learn",
        "io",
        "errors",
        "files",
    },
    # builders of small models for tests, the demo and benchmarks; the demo itself: nothing imports them
    "testing": {"testing", "align", "arch", "io", "eval", "stats", "errors", "deepalign", "progress"},
    "demo": {"demo", "testing", "graph", "align", "eval", "io", "stats", "errors", ""},
    # modules of the package root
    "api": {"align", "errors", "eval", "graph", "io", "merge", "progress", "recipe", "stats"},
    "progress": set(),
    "errors": set(),
    "files": {"errors"},
    "patterns": {"errors"},
    "registry": {"errors"},
    "__init__": set(),
    "__main__": {"cli"},
}


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return {m for m in out if m == "mergeflow" or m.startswith("mergeflow.")}


def test_every_package_and_root_module_has_rules():
    found = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in PKG.glob("*.py")}
    assert found == set(ALLOWED), (
        f"missing rules: {sorted(found - set(ALLOWED))}; stale: {sorted(set(ALLOWED) - found)}"
    )


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package):
    paths = sorted((PKG / package).glob("*.py")) if (PKG / package).is_dir() else [PKG / f"{package}.py"]
    for path in paths:
        for mod in imports_of(path):
            part = mod.split(".")[1] if "." in mod else ""
            assert part in ALLOWED[package], f"{path.relative_to(PKG.parent)} imports {mod}"


def test_modules_stay_small():
    for path in PKG.rglob("*.py"):
        n = len(path.read_text().splitlines())
        assert n <= 300, f"{path.relative_to(PKG.parent)} has {n} lines; split it by topic"


def test_tests_never_import_each_other():
    """Shared helpers live in tests/helpers.py (fixtures in conftest.py), never in another test module."""
    tests = Path(__file__).parent
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.test_"):
                raise AssertionError(
                    f"{path.name} imports {node.module}; move what it shares to tests/helpers.py"
                )
