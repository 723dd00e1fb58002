"""The command reports the errors it owns in one line and lets a library bug show as a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import dropkit.layers.dropout
from dropkit.app.cli import main
from dropkit.app.errors import DataError, UsageError

TINY = ["--epochs", "1", "--seeds", "1", "--mc-samples", "2", "--hidden", "8", "--quiet"]


def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = ["-m", "dropkit", *args] if code is None else ["-c", code, *args]
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, timeout=600)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _library_bug(self, x):
    raise ValueError("injected library bug")


def test_a_library_value_error_is_not_turned_into_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dropkit.layers.dropout.Dropout, "forward", _library_bug)
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match="injected library bug"):
        main(["demo", *TINY, "--out", str(out)])
    assert "error:" not in capsys.readouterr().err
    assert not out.exists()  # the failed run leaves nothing behind


def test_a_library_value_error_shows_its_traceback_in_the_command(tmp_path):
    code = textwrap.dedent("""
        import sys
        import dropkit.layers.dropout
        from dropkit.app.cli import main

        def forward(self, x):
            raise ValueError("injected library bug")

        dropkit.layers.dropout.Dropout.forward = forward
        sys.exit(main(sys.argv[1:]))
    """)
    proc = run("demo", *TINY, "--out", str(tmp_path / "runs"), code=code)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "ValueError: injected library bug"
    assert "error: injected" not in proc.stderr


def test_usage_and_data_errors_stay_one_line(tmp_path, capsys):
    assert main(["demo", *TINY, "--train-size", "5000", "--out", str(tmp_path / "a")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("dropkit demo: error: --train-size must leave test rows"), line
    missing = tmp_path / "missing.csv"
    assert main(["train", *TINY, "--data", str(missing), "--out", str(tmp_path / "b")]) == 2
    assert one_line(capsys.readouterr().err) == f"dropkit train: error: {missing}: no such file"
    assert issubclass(UsageError, ValueError) and issubclass(DataError, ValueError)


@pytest.mark.parametrize(("argv", "needle"), [
    (["bench", "--sizes", "0"], "argument --sizes: must be a positive integer, got 0"),
    (["bench", "--sizes", "256", "--repeat", "0"], "argument --repeat: must be a positive integer, got 0"),
    (["bench", "--threads", "two"], "argument --threads: not an integer: 'two'"),
])
def test_bench_usage_errors_are_one_line(argv, needle):
    proc = run(*argv)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("dropkit bench: error: ") and needle in line, line

