"""The real ``dropkit`` command with its stdout or stderr closed early: results first, then a quiet end.

A reader that closes its end of a pipe (``| head``, a pager that is quit, ``| true``) makes the
command's next write fail with EPIPE; Unix tools then end quietly with 141 (128 + SIGPIPE). A
terminal that goes away sends SIGHUP (129). Each case runs the command in a subprocess whose pipe
is closed by this side before the command writes, and checks the exit code, that nothing was said
about it, and that every file the command was asked for was published complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dropkit.app.cli import main

TINY = ["--epochs", "2", "--seeds", "2", "--mc-samples", "4", "--hidden", "16"]
RUN_FILES = {"loss_curves.png", "gap_nll.png", "results.json", "results.csv", "index.html"}


def start(*args: str, close: tuple[str, ...], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m dropkit args`` with pipes and close the ``close`` ones ("stdout", "stderr")
    on this side at once, so that the command's first write into them fails."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "dropkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=env)
    for name in close:
        getattr(proc, name).close()
    return proc


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Wait for the command; return its exit code and what it wrote to the streams left open."""
    said = [s.read().decode() for s in (proc.stdout, proc.stderr) if not s.closed]
    return proc.wait(timeout=300), "".join(said)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    with (d / "cls.csv").open("w") as f:
        f.write("a,b,c,label\n")
        f.writelines(f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{int(r[0] > 0)}\n" for r in x)
    return d / "cls.csv"


def test_demo_piped_into_a_reader_that_closes_keeps_the_run(tmp_path):
    # `dropkit demo --out run | true`: before, the table was printed first, the write failed with
    # "[Errno 32] Broken pipe", exit code 2, and run/ was never written.
    proc = start("demo", "--train-size", "60", "--p", "0", "0.5", *TINY, "--out", "run",
                 close=("stdout",), cwd=tmp_path)
    code, said = finish(proc)
    assert code == 141, said
    assert "Broken pipe" not in said and "Traceback" not in said and "error" not in said
    assert {p.name for p in (tmp_path / "run").iterdir()} >= RUN_FILES
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(doc["runs"]) == 4 and doc["reading"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial files left


def test_train_with_both_streams_closed_publishes_results_and_model(tmp_path, data):
    proc = start("train", "--data", str(data), "--target", "label", "--p", "0", "0.3", *TINY, "--json",
                 "--out", "run", "--save", "m.pt", "--save-p", "0.3", close=("stdout", "stderr"),
                 cwd=tmp_path)
    code, _ = finish(proc)
    assert code == 141
    assert {p.name for p in (tmp_path / "run").iterdir()} >= RUN_FILES - {"reliability.png"}
    import torch

    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["format"] == "dropkit-model" and saved["config"]["p"] == 0.3  # the rate --save-p chose


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    d = tmp_path_factory.mktemp("model")
    argv = ["train", "--data", str(data), "--target", "label", "--p", "0.3", *TINY, "--quiet",
            "--out", str(d / "run"), "--save", str(d / "m.pt")]
    assert main(argv) == 0
    return d / "m.pt"


def test_predict_output_file_is_complete_when_the_streams_are_closed(tmp_path, data, model, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(data), "--mc-samples", "8"]) == 0
    expected = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    proc = start("predict", "--model", str(model), "--data", str(data), "--mc-samples", "8",
                 "--output", "pred.csv", close=("stdout", "stderr"), cwd=tmp_path)
    code, _ = finish(proc)
    assert code == 141  # the "Wrote 60 predictions" line could not be written
    with (tmp_path / "pred.csv").open() as f:
        assert list(csv.DictReader(f)) == expected and len(expected) == 60
    # Printed into a reader that closes at once: a quiet end, nothing on stderr.
    code, said = finish(start("predict", "--model", str(model), "--data", str(data), close=("stdout",),
                              cwd=tmp_path))
    assert code == 141 and said == ""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_hangup_during_the_sweep_finishes_and_publishes_then_exits_129(tmp_path):
    proc = start("demo", "--train-size", "60", "--p", "0", "0.5", *TINY, "--epochs", "4", "--out", "run",
                 close=(), cwd=tmp_path)
    assert proc.stderr is not None
    first = proc.stderr.readline().decode()
    assert first.startswith("digits: 60 training rows"), first  # printed just before the sweep starts
    proc.send_signal(signal.SIGHUP)  # the terminal went away
    code, said = finish(proc)
    assert code == 129, said
    assert {p.name for p in (tmp_path / "run").iterdir()} >= RUN_FILES


def test_version_and_help_through_the_real_command(tmp_path):
    version = subprocess.run([sys.executable, "-m", "dropkit", "--version"], capture_output=True, text=True,
                             timeout=600)
    from dropkit import __version__

    assert version.returncode == 0 and version.stdout == f"dropkit {__version__}\n", version.stderr
    code, said = finish(start("train", "--help", close=("stdout",), cwd=tmp_path))
    assert code == 141 and said == ""
