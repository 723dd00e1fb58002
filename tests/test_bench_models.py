"""Smoke test of benchmarks/models.py: the table has its rows and ratios that follow from its times.

It runs ``--quick`` on the two smallest models in a subprocess, as a user would, and checks the
structure of what it prints and writes; it never asserts on speed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "models.py"
MODELS = ("mlp", "cnn")


def _rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in MODELS and len(fields) == 6:
            rows[fields[0]] = fields[1:]
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "models.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", ",".join(MODELS), "--markdown", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, out.read_text()


def test_rows_and_ratios_follow_from_printed_times(run):
    stdout, _ = run
    rows = _rows(stdout)
    assert set(rows) == set(MODELS), stdout
    for name, (torch_ms, dropkit_ms, floor_ms, ratio, share) in rows.items():
        t, d, f = float(torch_ms), float(dropkit_ms), float(floor_ms)
        assert min(t, d, f) > 0, name
        # Times are printed with 4 significant digits: the recomputed ratio agrees to rounding.
        assert float(ratio) == pytest.approx(d / t, rel=2e-3, abs=2e-3), name
        if share == "n/a":
            assert t - f < 0.02 * t * 1.01, name
        else:
            assert t - f >= 0.02 * t * 0.99, name
            assert float(share) == pytest.approx((d - f) / (t - f), rel=0.1, abs=0.02), name


def test_machine_and_patch_report_printed(run):
    stdout, _ = run
    assert "machine:" in stdout and "torch threads" in stdout and "python" in stdout
    for name in MODELS:
        # The guide's models hold one nn.Dropout each, which patch() replaces.
        assert f"{name}: guide" in stdout
    assert stdout.count("patch(): replaced 1 module(s); floor: 1 rate(s) set to 0") == len(MODELS)


def test_markdown_has_the_same_rows(run):
    stdout, text = run
    assert "| model | torch ms | dropkit ms | floor ms | dropkit/torch |" in text
    rows = _rows(stdout)
    for name in MODELS:
        line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:] == rows[name], (line, rows[name])
