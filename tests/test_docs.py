"""The documentation site builds with ``mkdocs build --strict``: a broken reference fails CI."""

import os
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
