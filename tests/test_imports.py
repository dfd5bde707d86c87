"""The package's modules import each other without a cycle: every import statement counts (module
level, inside functions, under TYPE_CHECKING), so each module can be read after the ones it uses."""

from __future__ import annotations

import ast
from pathlib import Path

import tvmlm

PACKAGE_DIR = Path(tvmlm.__file__).parent
EXTENSIONS = {"tvmlm._core"}  # compiled: imports nothing of the package


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from x import y` imports x.y when y is a module, else x (y is an attribute of x).
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules or sub in EXTENSIONS else base)
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges.add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_sees_the_package():
    graph = _import_graph()
    assert "tvmlm.engine" in graph["tvmlm"]  # the TYPE_CHECKING import
    assert {"tvmlm.generation", "tvmlm.compile"} <= graph["tvmlm.engine"]
    assert "tvmlm.models.packed" in graph["tvmlm.models.convert"]


def test_no_import_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_testing_package_imports_without_torch():
    """Benchmarks and stress runs use tvmlm.testing where only the package's own dependencies are
    installed: its builders import torch and transformers when called, not at import."""
    import subprocess
    import sys

    code = ("import sys, tvmlm.testing, tvmlm.testing.archs, tvmlm.testing.vocabs; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
