"""The documentation: the site builds with ``mkdocs build --strict`` (a broken reference fails CI),
every page is reachable from the README or docs/index.md and holds text in the repository, and
the help texts on docs/cli.md are the command's own."""

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_strict_build(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "api" / "patch" / "index.html").read_text()
    # mkdocstrings rendered the docstrings, and doctest examples became code blocks.
    assert "dropout_layers" in page and "&gt;&gt;&gt;" in page and 'class="go"' in page
    # The CLI page carries the help text of the installed command.
    assert "usage: dropkit demo" in (tmp_path / "site" / "cli" / "index.html").read_text()
    shutil.rmtree(tmp_path / "site")


def test_readme_quick_start_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(code, "README.md#quick-start", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "replaced 4 module(s)" in printed
    assert "self_attn: torch.nn.MultiheadAttention -> dropkit.MultiheadAttention" in printed
    layer = namespace["layer"]
    assert type(layer.dropout1) is namespace["nn"].Dropout  # unpatch put the original back
    assert namespace["y"].shape == (2, 10, 64)


DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def test_every_docs_page_is_linked_from_the_readme_or_the_index():
    readme = (ROOT / "README.md").read_text()
    from_readme = {(ROOT / m).resolve() for m in re.findall(r"docs/[\w\-/]+\.md", readme)}
    seen: set[Path] = set()
    todo = [DOCS / "index.md"]
    while todo:  # pages linked from docs/index.md, and from the pages it links, and so on
        page = todo.pop().resolve()
        if page in seen or not page.exists():
            continue
        seen.add(page)
        todo += [page.parent / target for target in LINK.findall(page.read_text())]
    reachable = from_readme | seen
    pages = {p.resolve() for p in DOCS.rglob("*.md")}
    assert not sorted(str(p.relative_to(DOCS)) for p in pages - reachable)
    # The README's list of pages names every top-level page itself.
    assert not [p.name for p in DOCS.glob("*.md") if f"docs/{p.name}" not in readme]


def prose(text: str) -> str:
    """A page without what only the site build fills in: comments, ``:::`` directives and their
    indented options, and headings."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"^:::.*(?:\n[ \t]+.*)*", "", text, flags=re.MULTILINE)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_no_docs_page_is_empty_in_the_repository():
    for page in sorted(DOCS.rglob("*.md")):
        words = len(prose(page.read_text()).split())
        assert words >= 30, f"{page.relative_to(ROOT)} is empty until the site is built"
    assert len(prose("# t\n\n::: dropkit.rng\n    options:\n      members: true\n").split()) == 0


def test_api_pages_name_only_what_their_module_has():
    for page in sorted((DOCS / "api").glob("*.md")):
        directive = re.search(r"^::: ([\w.]+)", page.read_text(), flags=re.MULTILINE)
        if directive is None:
            continue
        module = importlib.import_module(directive.group(1))
        listed = re.findall(r"^- `(\w+)` \(", page.read_text(), flags=re.MULTILINE)
        assert listed and all(hasattr(module, name) for name in listed), (page.name, listed)


def test_cli_page_holds_the_commands_current_help():
    pytest.importorskip("markdown", reason="mkdocs_hooks needs the docs packages (pip install '.[docs]')")
    sys.path.insert(0, str(ROOT))
    try:
        hooks = importlib.import_module("mkdocs_hooks")
    finally:
        sys.path.remove(str(ROOT))
    text = hooks.CLI_PAGE.read_text()
    written = hooks.HELP_PYTHON.search(text).group(1)
    if written != ".".join(map(str, sys.version_info[:2])):
        pytest.skip(f"docs/cli.md holds the help as Python {written}'s argparse lays it out")
    assert len(hooks.HELP_BLOCK.findall(text)) == 5
    assert hooks.with_current_help(text) == text, "the help text changed: run python mkdocs_hooks.py"
