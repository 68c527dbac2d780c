"""The import graph of the five packages, read from the source with `ast` (issue 18).

Two rules: imports go one way — model packages <- cinemamba library <- cinemamba.apps <- CLI
(the library never imports `cinemamba.apps`, `cinemamba.commands` or `cinemamba.cli`; the
applications never import the CLI; see docs/architecture.md, "Import direction") — and no
modules import each other, directly or through others. Imports inside functions count: a
cycle closed by a lazy import still ties two modules into one (neither can be read, moved or
tested without the other) and becomes an import-order failure as soon as someone hoists it.
Relative imports are resolved against the module's package. `if TYPE_CHECKING:` imports count
for the direction (they still couple the code) but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
APPS = "cinemamba.apps"
CLI = ("cinemamba.commands", "cinemamba.cli")


def module_name(path: Path, root: Path = SRC) -> str:
    """Dotted name of a source file (`pkg/__init__.py` -> `pkg`)."""
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def module_names(src: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under `src`."""
    return {module_name(p, src): p for p in src.rglob("*.py")}


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(
    source: str, module: str, is_package: bool, type_checking: bool
) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module, names taken from it) of every import statement, relative ones
    resolved; `import a.b` gives ("a.b", ()). Without `type_checking`, those under
    `if TYPE_CHECKING:` are left out."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str, tuple[str, ...]]] = []
    stack: list[ast.AST] = [ast.parse(source)]
    while stack:
        node = stack.pop()
        if not type_checking and _type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}: relative import beyond the top package")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            out.append((node.lineno, base, tuple(alias.name for alias in node.names)))
    return sorted(out)


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute name) of every import in `source`, `TYPE_CHECKING` ones included.

    `from a import b` yields `a.b` as well as `a` (b may be a submodule: `from cinemamba
    import apps` imports the applications).
    """
    out = []
    for line, base, names in _imports(source, module, is_package, True):
        out += [(line, base), *((line, f"{base}.{n}") for n in names)]
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its nearest enclosing module that is in the graph (None: third-party)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The graph's modules that module `name` (file `path`) imports at run time: `from pkg
    import sub` is an edge to the submodule `pkg.sub` when there is one (its package is
    already being imported by then), else to `pkg`."""
    found: set[str | None] = set()
    for _, base, names in _imports(path.read_text(), name, path.name == "__init__.py", False):
        for n in names or ("",):
            full = f"{base}.{n}" if n else base
            found.add(full if full in modules else _known(base, modules))
    return found - {None, name}


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


# ---- import direction ----------------------------------------------------------------------
def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden(module: str, imported: str) -> bool:
    """True when `module` may not import `imported` (library -> apps/CLI, apps -> CLI)."""
    if any(_within(module, p) for p in CLI):
        return False  # the CLI sits on top and may import anything
    if any(_within(imported, p) for p in CLI):
        return True
    return _within(imported, APPS) and not _within(module, APPS)


def violations(root: Path = SRC) -> list[str]:
    """`file:line: module imports name` for every import against the direction."""
    found = []
    for path in sorted((root / "cinemamba").rglob("*.py")):
        module = module_name(path, root)
        for line, name in imported_names(path.read_text(), module, path.name == "__init__.py"):
            if forbidden(module, name):
                found.append(f"{path.relative_to(root)}:{line}: {module} imports {name}")
    return sorted(set(found))


def test_no_import_against_the_direction() -> None:
    assert (SRC / "cinemamba" / "apps" / "demo").is_dir()  # the layout this test checks
    bad = violations()
    assert not bad, "imports against the direction (library <- apps <- CLI):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "is_package", "source", "name"),
    [
        ("cinemamba.eval.memory", False, "def f():\n    from cinemamba.apps.demo import x\n",
         "cinemamba.apps.demo"),
        ("cinemamba.eval.memory", False, "from ..apps import demo\n", "cinemamba.apps.demo"),
        ("cinemamba.eval", True, "from .. import cli\n", "cinemamba.cli"),
        ("cinemamba.apps.demo.stages", False, "from ...commands import sample\n",
         "cinemamba.commands.sample"),
        ("cinemamba.data.video", False, "import cinemamba.commands.sample as s\n",
         "cinemamba.commands.sample"),
        ("cinemamba.latents", True, "from cinemamba import apps\n", "cinemamba.apps"),
    ],
)  # fmt: skip
def test_forbidden_imports_are_found(module: str, is_package: bool, source: str, name: str) -> None:
    """The parser sees function-level, relative and `from package import submodule` imports."""
    names = [n for _, n in imported_names(source, module, is_package)]
    assert name in names
    assert forbidden(module, name)


def test_allowed_directions() -> None:
    assert not forbidden("cinemamba.apps.demo.stages", "cinemamba.eval.run")
    assert not forbidden("cinemamba.apps.bench.runner", "cinemamba.apps.demo.config")
    assert not forbidden("cinemamba.commands.demo", "cinemamba.apps.demo")
    assert not forbidden("cinemamba.cli", "cinemamba.commands.sample")
    assert not forbidden("cinemamba.applications", "cinemamba.clip")  # prefixes, not substrings


def test_violation_names_file_and_line(tmp_path: Path) -> None:
    """A library module importing an application is reported with its file and line."""
    pkg = tmp_path / "cinemamba" / "eval"
    pkg.mkdir(parents=True)
    (tmp_path / "cinemamba" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "leak.py").write_text(
        '"""x"""\n\nimport os\n\n\ndef f():\n    from ..apps import demo\n'
    )
    assert violations(tmp_path) == [
        "cinemamba/eval/leak.py:7: cinemamba.eval.leak imports cinemamba.apps",
        "cinemamba/eval/leak.py:7: cinemamba.eval.leak imports cinemamba.apps.demo",
    ]
