"""The import graph of ``vapt`` and ``mgpath`` has no circles, also none hidden in imports inside functions.

Every ``import`` statement of every module is read from the source (AST, any nesting depth), so a deferred
import counts the same as one at the top. Third-party imports are not part of the graph.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vapt", "mgpath")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the two packages: dotted name -> file."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if "_shipped" not in p.parts and p.name != "__main__.py"}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_the_finder_sees_a_circle_through_a_deferred_import(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import g\n")
    graph = {"a": imported_modules("a", a, {"a", "b"}), "b": imported_modules("b", b, {"a", "b"})}
    assert find_cycles(graph) == [["a", "b"]]


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert "vapt.backbones.factory" in graph["mgpath.commands.extract"] or \
        "vapt.backbones" in graph["mgpath.commands.extract"]
    assert "vapt.fileio.atomic" in graph["mgpath.io"]
    assert len(graph) > 80


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_vapt_never_imports_mgpath():
    graph = import_graph()
    wrong = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("vapt") for t in ts
                   if t.startswith("mgpath"))
    assert wrong == []
