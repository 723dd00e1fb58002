"""MkDocs hooks: doctest examples as code blocks, and the CLI's help text in docs/cli.md.

The docstrings put their examples under an ``Example:`` heading, which griffe's Google-style
parser renders as an admonition of Markdown text rather than as an examples section, so the
``>>>`` lines and their output would be read as prose (and ``[0.1, 0.2]`` as a link). This
hook adds a Markdown preprocessor that fences each run of doctest lines, up to the next blank
line, as a ``pycon`` code block.

A page line ``<!-- dropkit-help: demo -->`` is replaced by the output of ``dropkit demo --help``,
taken from the installed command at build time so that the page cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import textwrap

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


def _help_text(args: list[str]) -> str:
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


def on_page_markdown(markdown, page, config, files):
    def replace(match: re.Match) -> str:
        return "```text\n" + _help_text(match.group(1).split()) + "\n```"

    return re.sub(r"<!-- dropkit-help:([^>]*)-->", replace, markdown)
