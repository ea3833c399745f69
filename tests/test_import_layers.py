"""The import graph, read from the sources with ``ast``: no circles, no upward imports.

Layers, from the bottom: leaf modules (``preprocess``, ``weights``, ``feature_cache``, ``catalog``, ``files``,
``masks``) import nothing of the package but each other; ``encoders/`` imports only leaves and
itself; ``functional/`` and ``metrics/`` build on ``encoders/`` (``functional -> encoders <-
metrics``) and never on each other's consumers; ``callbacks``, ``losses``, ``analysis/`` and the
CLI sit on top. Every import counts, also one inside a function (a lazy import is still a
dependency), except those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_dfd", "recon_models")
LEAVES = {"lightning_dfd.preprocess", "lightning_dfd.weights", "lightning_dfd.feature_cache",
          "lightning_dfd.catalog", "lightning_dfd.masks", "lightning_dfd.files",
          "lightning_dfd.sample_ids"}
#: layer prefix -> prefixes it must never import
FORBIDDEN = {
    "lightning_dfd.encoders": ("lightning_dfd.functional", "lightning_dfd.metrics", "lightning_dfd.spatial",
                               "lightning_dfd.callbacks", "lightning_dfd.analysis", "lightning_dfd.losses",
                               "lightning_dfd.cli", "recon_models"),
    "lightning_dfd.functional": ("lightning_dfd.metrics", "lightning_dfd.spatial", "lightning_dfd.callbacks",
                                 "lightning_dfd.analysis", "lightning_dfd.losses", "lightning_dfd.cli",
                                 "recon_models"),
    "lightning_dfd.metrics": ("lightning_dfd.callbacks", "lightning_dfd.analysis", "lightning_dfd.losses",
                              "lightning_dfd.cli", "recon_models"),
    "lightning_dfd.spatial": ("lightning_dfd.metrics", "lightning_dfd.callbacks", "lightning_dfd.analysis",
                              "recon_models"),
    "lightning_dfd": ("recon_models",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in PACKAGES and t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_upward_imports():
    bad = []
    for name, targets in _graph().items():
        if name in LEAVES:
            bad += [f"{name} -> {t}" for t in targets if t not in LEAVES]
            continue
        rules = [prefix for prefix in FORBIDDEN if name == prefix or name.startswith(prefix + ".")]
        if not rules:
            continue
        rule = max(rules, key=len)
        bad += [f"{name} -> {t}" for t in targets
                if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[rule])]
        if rule == "lightning_dfd.encoders":  # encoders import leaves and encoders only
            bad += [f"{name} -> {t}" for t in targets
                    if not (t in LEAVES or t.startswith("lightning_dfd.encoders"))]
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_a_circle_and_an_upward_import():
    """The graph reader finds what it must (a test of the test)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    known = set(_modules())
    edges = _imports("lightning_dfd.metrics.base", ROOT / "lightning_dfd/metrics/base.py", known)
    assert "lightning_dfd.encoders.encoder_pass" in edges


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_read(package):
    assert any(name.startswith(package + ".") for name in _modules())
