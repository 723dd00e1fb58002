"""MkDocs hooks: doctest examples as code blocks, and the CLI's help text in docs/cli.md.

The docstrings put their examples under an ``Example:`` heading, which griffe's Google-style
parser renders as an admonition of Markdown text rather than as an examples section, so the
``>>>`` lines and their output would be read as prose (and ``[0.1, 0.2]`` as a link). This
hook adds a Markdown preprocessor that fences each run of doctest lines, up to the next blank
line, as a ``pycon`` code block.

docs/cli.md holds the output of each ``dropkit ... --help`` between the lines
``<!-- dropkit-help: demo -->`` and ``<!-- /dropkit-help -->``, so that the page is complete in
the repository too. ``python mkdocs_hooks.py`` rewrites those blocks from the installed command;
tests/test_docs.py checks that they are current, and the site build puts the current help in.
argparse lays help out a little differently from one Python version to the next, so the page
names the version that wrote it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import textwrap
from pathlib import Path

from markdown import Markdown
from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor


class _DoctestFences(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        block: list[str] = []
        in_fence = False
        for line in [*lines, ""]:
            if line.lstrip().startswith(("```", "~~~")) and not block:
                in_fence = not in_fence
            if block and not line.strip():
                out += ["", "```pycon", *textwrap.dedent("\n".join(block)).split("\n"), "```", ""]
                block = []
            elif block or (not in_fence and line.lstrip().startswith(">>> ")):
                block.append(line)
                continue
            out.append(line)
        return out[:-1]


class DoctestFences(Extension):
    """Markdown extension registering the doctest-fencing preprocessor."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_DoctestFences(md), "dropkit_doctest_fences", 40)


def on_config(config):
    config.markdown_extensions.append(DoctestFences())
    return config


HELP_BLOCK = re.compile(r"<!-- dropkit-help:([^>]*)-->\n.*?<!-- /dropkit-help -->", re.DOTALL)
HELP_PYTHON = re.compile(r"<!-- dropkit-help-python: ([0-9.]+) -->")
CLI_PAGE = Path(__file__).resolve().parent / "docs" / "cli.md"


def help_text(args: list[str]) -> str:
    """The output of ``dropkit <args> --help`` at a fixed width of 100 columns."""
    from dropkit.app.cli import main

    buffer = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; fix it for the page
    try:
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            main([*args, "--help"])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return buffer.getvalue().rstrip()


def _block(args: str, fenced_only: bool = False) -> str:
    fenced = "```text\n" + help_text(args.split()) + "\n```"
    return fenced if fenced_only else f"<!-- dropkit-help:{args}-->\n{fenced}\n<!-- /dropkit-help -->"


def with_current_help(markdown: str) -> str:
    """``markdown`` with every help block rewritten from the installed command."""
    version = ".".join(map(str, sys.version_info[:2]))
    markdown = HELP_PYTHON.sub(f"<!-- dropkit-help-python: {version} -->", markdown)
    return HELP_BLOCK.sub(lambda m: _block(m.group(1)), markdown)


def on_page_markdown(markdown, page, config, files):
    return HELP_BLOCK.sub(lambda m: _block(m.group(1), fenced_only=True), markdown)


if __name__ == "__main__":
    CLI_PAGE.write_text(with_current_help(CLI_PAGE.read_text()))
    print(f"rewrote the help texts in {CLI_PAGE}")
