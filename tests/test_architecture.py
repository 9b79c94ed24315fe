"""The package's import graph: no cycles, and imports only downwards through the layers that
docs/architecture.md draws (utils/errors → io/metrics → coding → models → eval/training → cli).

Every import counts, at module level or inside a function (a lazy import that closes a cycle is
still a cycle); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lvae"

# Lower layers never import higher ones; a module may import its own layer.
LAYERS = [
    ("utils", ["lvae.errors", "lvae.utils", "lvae.paths"]),
    ("io", ["lvae.io", "lvae.metrics"]),
    ("coding", ["lvae.coding", "lvae.bitstream", "lvae.codec"]),
    ("models", ["lvae.models", "lvae"]),  # the root package exposes the model registry
    ("eval", ["lvae.eval"]),
    ("training", ["lvae.training"]),
    ("cli", ["lvae.cli", "lvae.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The lvae modules that ``name`` imports (resolved to modules, not to names inside them)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # `from x import name`: the module is x
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lvae":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "lvae":
                return
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                add(sub if sub in known else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> int:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py")
    return level


def test_every_module_is_in_a_layer():
    for module in _graph():
        _layer(module)


def test_imports_only_go_down_the_layers():
    wrong = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The graph builder itself: a lazy import inside a function closes a cycle."""
    pkg = tmp_path / "lvae"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    graph = _graph()
    assert graph["lvae.sub.a"] == {"lvae.sub.b"} and graph["lvae.sub.b"] == {"lvae.sub.a"}
    assert graph["lvae.c"] == set()
