"""The command's output rules as a library: Outputs checks paths up front and commits atomically."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dropkit.app._io import Outputs, held_interrupts
from dropkit.app._limits import check_memory, sweep_bytes
from dropkit.app.data import DataError


def test_an_error_while_staging_leaves_nothing_not_even_made_parents(tmp_path):
    outputs = Outputs(inputs=[], force=False)
    folder = outputs.folder(tmp_path / "a" / "b" / "run", "--out")
    model = outputs.file(tmp_path / "m.pt", "--save")
    with pytest.raises(RuntimeError, match="disk on fire"), outputs.staged() as staged:
        (staged[folder] / "results.json").write_text("{}")
        staged[model].write_bytes(b"half")
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_commit_puts_every_output_in_place_and_force_replaces_a_folder_whole(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stale.png").write_bytes(b"old")
    outputs = Outputs(inputs=[], force=True)
    folder = outputs.folder(tmp_path / "run", "--out")
    with outputs.staged() as staged:
        (staged[folder] / "results.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json"]


def test_paths_refused_up_front(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,y\n1,0\n")
    os.link(data, tmp_path / "hard.csv")
    outputs = Outputs(inputs=[data], force=True)
    with pytest.raises(DataError, match="--save .*hard.csv is an input file"):
        outputs.file(tmp_path / "hard.csv", "--save")  # the same file under another name
    with pytest.raises(DataError, match="holds the input"):
        outputs.folder(tmp_path, "--out")
    with pytest.raises(DataError, match="d.csv is a file, not a folder"):
        outputs.file(data / "m.pt", "--save")
    outputs.folder(tmp_path / "run", "--out")
    with pytest.raises(DataError, match="overlaps another output"):
        outputs.file(tmp_path / "run" / "m.pt", "--save")
    with pytest.raises(DataError, match="exists; pass --force"):
        Outputs(inputs=[], force=False).file(data, "--output")


def test_held_interrupts_delivers_a_ctrl_c_after_the_block():
    reached = []
    with pytest.raises(KeyboardInterrupt), held_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append(True)  # the block finished although the signal came in the middle
    assert reached == [True]
    with held_interrupts(reraise=False):
        os.kill(os.getpid(), signal.SIGINT)


def test_memory_estimate_grows_with_the_flags_and_refuses_in_one_line():
    small = sweep_bytes(1000, 300, 20, 3, 128, 32, 30)
    # Independent count for --hidden 128: 4 copies of (21*128 + 129*3) params, 3 (1000, 148)
    # activations, 30*300 replicas of (20 + 384 + 9) values and the data twice, 4 bytes each.
    assert small == 4 * (4 * (21 * 128 + 129 * 3) + 3 * 1000 * 148 + 30 * 300 * 413 + 2 * 1300 * 21)
    assert sweep_bytes(1000, 300, 20, 3, 128, 32, 30_000) > 800 * small
    with pytest.raises(DataError, match=r"^--mc-samples 30000 needs about 1\.0 GiB of memory; 0\.5 GiB"):
        check_memory(2**30, "--mc-samples 30000", available=2**29)
    check_memory(2**20, "anything", available=2**29)


def test_default_output_folder_is_new_each_time(tmp_path, monkeypatch):
    from dropkit.app.cli import _default_out

    monkeypatch.chdir(tmp_path)
    first = _default_out()
    first.mkdir(parents=True)
    assert _default_out() != first and _default_out().parent == Path("dropkit-runs")
