"""No two modules of the cinemamba package import each other, directly or through others.

The graph is read from the source with `ast`, lazy imports inside functions included: a cycle
closed by a function-level import still ties two modules into one (neither can be read, moved
or tested without the other), and it turns into an import-order failure as soon as someone
hoists the import (issue 18: `eval.run` <-> `eval.reconstruction`). `TYPE_CHECKING` imports
are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def module_names(src: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under `src` (a package is its `__init__.py`)."""
    return {
        ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
        for p in src.rglob("*.py")
    }


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its nearest enclosing module that is in the graph (None: third-party)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The graph's modules that `name` imports anywhere in its file (functions included)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(_known(a.name, modules) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` / `from ..y import z`
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:  # `from pkg import submodule` names the submodule
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else _known(base, modules))
    found.discard(None)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_sees_a_lazy_cycle(tmp_path: Path) -> None:
    """The finder itself: a function-level import closing a loop of three is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("def g():\n    from pkg import a\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    (pkg / "e.py").write_text("import pkg.d\n")
    modules = module_names(tmp_path)
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycles() -> None:
    # All five packages in one graph (cinemamba_vae.identity <-> pretrained and
    # cinemamba_sampling.pipeline <-> saved were cycles closed by lazy imports).
    modules = {}
    for src in sorted(SRC.parents[1].glob("*/src")):
        modules.update(module_names(src))
    assert "cinemamba.eval.run" in modules and "cinemamba_sampling.saved" in modules
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    found = cycles(graph)
    assert not found, "import cycles (each line imports itself back):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )
