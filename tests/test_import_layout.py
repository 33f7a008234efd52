"""The package's modules import each other without a circle: each module sits above what it
imports. Function-level imports count (a lazy import hides a circle from Python, not from a reader),
so do the packages an import runs on its way (their __init__) and the plug-ins a registry's package
loads by name. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_imports() -> dict[str, set[str]]:
    """module -> the package modules importing it runs: what it names, the packages above those
    (their __init__ runs first, unless the importer lives inside them), and, for a package whose
    __init__ loads its submodules by name (import_module: the registries' plug-ins), all of them."""
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in (t for t in targets if t in modules):
                parts = target.split(".")
                parents = [".".join(parts[:i]) for i in range(2, len(parts))]
                edges[name].update(p for p in [target, *parents]
                                   if p != name and not name.startswith(p + ".") and p in modules)
        if path.name == "__init__.py" and "import_module" in text:
            edges[name].update(m for m in modules if m.rpartition(".")[0] == name)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_circles_finds_a_loop_and_only_the_loop():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_itself_back():
    edges = module_imports()
    assert "guidediff.loading" in edges and "guidediff.checkpoint" in edges["guidediff.sources"]
    assert circles(edges) == []
