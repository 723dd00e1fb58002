"""The library and the command stay apart: no library module imports ``dropkit.app``.

The imports are read from the source with :mod:`ast` (every ``import``, ``from ... import``,
relative import and module path written as a string for ``importlib``), so an import inside a
function counts as much as one at the top; a fresh interpreter then checks what ``import
dropkit`` and the library's public names really load.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dropkit

SRC = Path(dropkit.__file__).parent
APP = SRC / "app"
# The command's modules; none of these names may exist, or be imported, outside dropkit/app.
COMMAND_MODULES = {"cli", "data", "training", "report", "plots", "checkpoint", "bench", "models", "errors",
                   "_io", "_limits", "_startup", "_streams"}
# `python -m dropkit` runs the command: the one library file allowed to import it.
ENTRY_POINT = SRC / "__main__.py"
MODULE_PATH = re.compile(r"dropkit(\.\w+)+")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str | None = None) -> set[str]:
    """Every module ``path`` (the module ``name``) imports, absolute; ``from a import b`` gives
    ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path) if name is None else name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_PATH.fullmatch(node.value):  # importlib.import_module("dropkit....")
                found.add(node.value)
    return found


def library_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if APP not in p.parents and p != ENTRY_POINT)


def _is_command(module: str) -> bool:
    parts = module.split(".")
    return parts[:2] == ["dropkit", "app"] or (len(parts) >= 2 and parts[0] == "dropkit"
                                                and parts[1] in COMMAND_MODULES)


def test_the_walk_sees_relative_and_dynamic_imports(tmp_path):
    # The checker itself, on a file that imports the command three ways.
    probe = tmp_path / "probe.py"
    text = "from ..app import cli\nimport importlib\nimportlib.import_module('dropkit.app.bench')\n"
    probe.write_text(text + "def f():\n    from dropkit.app.data import DataError\n")
    found = imported_modules(probe, "dropkit.functional.probe")
    assert {"dropkit.app", "dropkit.app.cli", "dropkit.app.bench", "dropkit.app.data"} <= found
    assert all(_is_command(m) for m in ("dropkit.app", "dropkit.app.cli", "dropkit.cli", "dropkit._startup"))
    assert not _is_command("dropkit.layers") and not _is_command("dropkit.functional.dropout")


def test_no_library_module_imports_the_command():
    files = library_files()
    assert len(files) > 30 and SRC / "layers" / "_base.py" in files and SRC / "__init__.py" in files
    offenders = {str(p.relative_to(SRC)): sorted(filter(_is_command, imported_modules(p))) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_command_modules_live_only_in_dropkit_app():
    top = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if p.is_dir()}
    assert top & COMMAND_MODULES == set()
    assert {p.stem for p in APP.glob("*.py")} - {"__init__"} == COMMAND_MODULES
    entry = set(filter(_is_command, imported_modules(ENTRY_POINT)))
    assert entry == {"dropkit.app.cli", "dropkit.app.cli.main"}


CHECK = """
import sys
{body}
heavy = ("matplotlib", "sklearn", "triton")
print(sorted(m for m in sys.modules if m.startswith("dropkit.app") or m.split(".")[0] in heavy))
print(sorted(m for m in sys.modules if m.startswith("dropkit")))
print(hasattr(sys.modules["dropkit"], "app"))
"""


@pytest.mark.parametrize("body", [
    "import dropkit",
    "import dropkit\nfor name in dropkit.__all__:\n    getattr(dropkit, name)",
])
def test_import_dropkit_loads_no_command_and_no_heavy_package(body):
    proc = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    forbidden, loaded, has_app = proc.stdout.splitlines()
    assert forbidden == "[]" and has_app == "False"
    if body == "import dropkit":
        assert loaded == "['dropkit']"  # the names load on first use


def test_every_public_name_resolves_and_is_listed():
    assert set(dropkit.__all__) <= set(dir(dropkit))
    for name in dropkit.__all__:
        assert getattr(dropkit, name) is not None, name
    assert dropkit.Dropout is dropkit.layers.Dropout and dropkit.dropout is dropkit.functional.dropout
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        dropkit.no_such_name  # noqa: B018


def test_the_lazy_names_agree_with_all_and_with_the_type_checking_imports():
    # __init__.py states each public name three times: in __all__, in _HOMES (or _SUBMODULES)
    # for the first use, and in the `if TYPE_CHECKING:` imports for type checkers.
    public_modules = {n for n in dropkit.__all__ if n in dropkit._SUBMODULES}
    assert set(dropkit.__all__) == set(dropkit._HOMES) | public_modules
    assert len(dropkit.__all__) == len(set(dropkit.__all__))
    tree = ast.parse((SRC / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {}
    for node in guarded.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            typed[alias.name] = f"{node.module}.{alias.name}" if node.module == "dropkit" else node.module
    assert {n: m for n, m in typed.items() if n not in dropkit._SUBMODULES} == dropkit._HOMES
    assert {n for n in typed if n in dropkit._SUBMODULES} == public_modules
    for name, home in dropkit._HOMES.items():
        assert getattr(dropkit, name) is getattr(importlib.import_module(home), name), name
