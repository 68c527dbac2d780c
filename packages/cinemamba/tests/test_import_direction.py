"""Imports go one way: model packages <- cinemamba library <- cinemamba.apps <- CLI.

Every module of the cinemamba package is parsed with `ast` (imports at the top, inside
functions and under `if TYPE_CHECKING`, relative ones resolved against the module's package):
the library must not import `cinemamba.apps`, `cinemamba.commands` or `cinemamba.cli`, and
the applications must not import the CLI. See docs/architecture.md, "Import direction".
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


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved.

    `from a import b` yields `a.b` as well as `a` (b may be a submodule: `from cinemamba
    import apps` imports the applications).
    """
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}: relative import beyond the top package")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


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
