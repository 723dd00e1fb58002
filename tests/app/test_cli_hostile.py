"""The dropkit command under hostile input: damaged files, edited models, absurd flags, paths that
would overwrite something, and Ctrl-C at every stage.

Every refusal is checked the way a user meets it, through ``python -m dropkit`` in a subprocess:
exit code 2, exactly one line on stderr, no traceback, nothing left on disk, and every input
file byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit.app.checkpoint import load_model, save_model
from dropkit.app.cli import main
from dropkit.app.data import DataError, Dataset, load_file, stratified_split
from dropkit.app.training import TrainConfig, prepare, train_run

TINY = ["--epochs", "1", "--seeds", "1", "--mc-samples", "2", "--hidden", "4", "--p", "0", "0.5", "--quiet"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dropkit", *args]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}  # a leaked RuntimeWarning would fail the run
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (hidden temporary files included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    for advice in ("allow_pickle", "weights_only"):  # never advise unpickling a stranger's file
        assert advice not in lines[0], lines[0]
    return lines[0]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


class Payload:
    """Unpickling this would create the folder ``marker``: the proof that code in a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    d = Dataset(rng.normal(size=(30, 2)), np.arange(30) % 3, "classification", ["a", "b"], "y",
                ["r", "g", "b"])
    prep = prepare(d, np.arange(24), np.arange(24, 30))
    run_ = train_run(prep, TrainConfig(p=0.5, epochs=1, hidden=4, mc_samples=2))
    return save_model(tmp_path_factory.mktemp("model") / "m.pt", run_, d, prep)


def _edited(model_file: Path, folder: Path, edit: str) -> Path:
    state = torch.load(model_file, weights_only=True)
    cfg = state["config"]
    if edit == "classes":
        cfg["classes"] = cfg["classes"][:2]
    elif edit == "task":
        cfg["task"] = "regression"
    elif edit == "hidden":
        cfg["hidden"] = 10**9
    path = folder / f"edited-{edit}.pt"
    torch.save(state, path)
    return path


def _case(name: str, d: Path, model_file: Path) -> tuple[list[str], list[str]]:
    """Build the input files of one hostile case in ``d``; return the arguments and the needles."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 3))
    good = write_csv(d / "d.csv", ["a", "b", "c", "label"], [[*r, i % 2] for i, r in enumerate(x.round(4))])
    np.savez(d / "ok.npz", X=x, y=np.arange(24) % 2)
    archive = (d / "ok.npz").read_bytes()
    if name == "truncated npz":
        (d / "t.npz").write_bytes(archive[: len(archive) * 2 // 3])
        return ["train", "--data", "t.npz", *TINY], ["t.npz", "archive"]
    if name == "corrupted npz":
        damaged = bytearray(archive)
        for i in range(100, 400, 37):
            damaged[i] ^= 0x5A
        (d / "c.npz").write_bytes(bytes(damaged))
        return ["train", "--data", "c.npz", *TINY], ["c.npz"]
    if name == "pickle in npz":
        objects = np.empty(24, dtype=object)
        objects[:] = [Payload(d / "marker")] * 24
        np.savez(d / "p.npz", X=objects.reshape(24, 1), y=np.arange(24) % 2)
        return ["train", "--data", "p.npz", *TINY], ["p.npz", "never unpickles"]
    if name == "truncated csv":
        text = good.read_text()
        (d / "cut.csv").write_text(text[: len(text) // 2].rsplit(",", 1)[0])
        return ["train", "--data", "cut.csv", "--target", "label", *TINY], ["cut.csv", "fields"]
    if name == "save is the data":
        (d / "sub").mkdir()
        return ["train", "--data", "d.csv", "--target", "label", "--save", "sub/../d.csv", *TINY], [
            "--save", "input file"]
    if name == "save under a file":
        return ["train", "--data", "d.csv", "--target", "label", "--save", "d.csv/m.pt", *TINY], [
            "--save", "is a file"]
    if name == "existing results":
        (d / "runs").mkdir()
        (d / "runs" / "results.json").write_text("{}\n")
        args = ["train", "--data", "d.csv", "--target", "label", "--out", "runs", *TINY]
        return args, ["--out runs", "--force"]
    if name == "force never deletes an input":
        return ["train", "--data", "d.csv", "--target", "label", "--out", ".", "--force", *TINY], [
            "holds the input"]
    if name == "memory":
        big = ["--hidden", "1000000", "--mc-samples", "100000", "--epochs", "1", "--seeds", "1", "--quiet"]
        return ["train", "--data", "d.csv", "--target", "label", *big], ["GiB"]
    if name == "threads":
        return ["train", "--data", "d.csv", "--target", "label", "--threads", "1000000", *TINY], [
            "--threads", "at most"]
    if name == "lr":
        args = ["train", "--data", "d.csv", "--target", "label", "--lr", "1e300", *TINY]
        return args, ["--lr", "at most 10"]
    if name == "huge float labels":
        write_csv(d / "big.csv", ["a", "label"], [[i, [0, 1, "1e19", "2e19"][i % 4]] for i in range(24)])
        return ["train", "--data", "big.csv", "--target", "label", *TINY], ["big.csv", "2**53"]
    if name == "single-row classes":
        write_csv(d / "one.csv", ["a", "label"], [[i, i] for i in range(1000)])
        return ["train", "--data", "one.csv", "--target", "label", "--task", "classification", *TINY], [
            "1000 classes has a single row"]
    if name == "no columns":
        np.savez(d / "empty.npz", X=np.zeros((24, 0)), y=np.arange(24) % 2)
        return ["train", "--data", "empty.npz", *TINY], ["empty.npz", "(24, 0)"]
    if name == "pickle in pt":
        torch.save({"format": Payload(d / "marker")}, d / "evil.pt")
        return ["predict", "--model", "evil.pt", "--data", "d.csv"], ["evil.pt", "never unpickles"]
    if name.startswith("edited model"):
        edited = _edited(model_file, d, name.split()[-1])
        write_csv(d / "f.csv", ["a", "b"], [[0.1, 0.2], [0.3, -1]])
        return ["predict", "--model", edited.name, "--data", "f.csv"], [edited.name, "damaged content"]
    if name == "output is the data":
        (d / "m.pt").write_bytes(model_file.read_bytes())
        write_csv(d / "f.csv", ["a", "b"], [[0.1, 0.2], [0.3, -1]])
        args = ["predict", "--model", "m.pt", "--data", "f.csv", "--output", "f.csv"]
        return args, ["--output", "input file"]
    if name == "predict far from the training rows":
        (d / "m.pt").write_bytes(model_file.read_bytes())
        write_csv(d / "f.csv", ["a", "b"], [[0.1, 0.2], [1e300, -1]])
        return ["predict", "--model", "m.pt", "--data", "f.csv"], ["f.csv", "column(s) a", "float32"]
    raise AssertionError(name)


CASES = ["truncated npz", "corrupted npz", "pickle in npz", "truncated csv", "save is the data",
         "save under a file", "existing results", "force never deletes an input", "memory", "threads", "lr",
         "huge float labels", "single-row classes", "no columns", "pickle in pt", "edited model classes",
         "edited model task", "edited model hidden", "output is the data",
         "predict far from the training rows"]


# A subprocess costs a torch import (1.5-2 s of CPU), so one case of each kind runs as the real
# command and the others call main() in this process, checked the same way.
THROUGH_THE_COMMAND = ["truncated npz", "pickle in pt", "save is the data", "memory", "edited model task",
                       "existing results"]


@pytest.mark.parametrize("name", THROUGH_THE_COMMAND)
def test_refused_through_the_command(name, tmp_path, model_file):
    args, needles = _case(name, tmp_path, model_file)
    before = snapshot(tmp_path)
    assert_refused(run(*args, cwd=tmp_path), *needles)
    assert snapshot(tmp_path) == before  # inputs byte-identical, no partial output, no marker
    assert not (tmp_path / "marker").exists()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name", [c for c in CASES if c not in THROUGH_THE_COMMAND])
def test_refused_in_process(name, tmp_path, model_file, capsys, monkeypatch):
    args, needles = _case(name, tmp_path, model_file)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as e:  # argparse refuses a flag by exiting
        code = e.code
    assert_refused(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), *needles)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "marker").exists()


def test_edited_model_refused_by_the_library_too(tmp_path, model_file):
    for edit in ("classes", "task", "hidden"):
        with pytest.raises(DataError, match="damaged content"):
            load_model(_edited(model_file, tmp_path, edit))
    assert load_model(model_file).classes == ["r", "g", "b"]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a leaked numpy warning fails the test
def test_exact_labels_and_huge_features_train(tmp_path, capsys, monkeypatch):
    # Integer labels beyond 2**53 stay distinct classes; a feature of +-1e300 is standardized, not
    # zeroed.
    rng = np.random.default_rng(2)
    labels = [0, 1, 10**19, 10**19 + 1]
    normal = rng.normal(size=(40, 2))
    rows = [[f"{v * 1e300:.6e}", f"{w:.4f}", labels[i % 4]] for i, (v, w) in enumerate(normal)]
    write_csv(tmp_path / "d.csv", ["huge", "b", "label"], rows)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", "d.csv", "--target", "label", "--out", "o", "--save", "m.pt", *TINY, "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == ["0", "1", "10000000000000000000", "10000000000000000001"]
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    loaded = load_model(tmp_path / "m.pt")
    # The huge column's statistics over the training rows of the saved model's split (seed 0),
    # against numpy on the values scaled down by hand.
    train, _ = stratified_split(load_file(tmp_path / "d.csv", "label").y, 0.25, seed=0)
    values = np.array([float(r[0]) for r in rows])[train] / 1e300
    assert loaded.scaler.mean[0] == pytest.approx(values.mean() * 1e300, rel=1e-9)
    assert loaded.scaler.std[0] == pytest.approx(values.std() * 1e300, rel=1e-9)


def test_few_rows_many_columns_gets_a_note_and_force_replaces_a_folder(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(3)
    write_csv(tmp_path / "w.csv", [f"c{j}" for j in range(50)] + ["label"],
              [[*rng.normal(size=50).round(3), i % 2] for i in range(8)])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "stale.txt").write_text("old\n")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", "w.csv", "--target", "label", "--out", "o", "--save", "m.pt", "--force",
            *[a for a in TINY if a != "--quiet"]]
    assert main(args) == 0
    assert "note: w.csv has 8 rows and 50 feature columns" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "gap_nll.png", "index.html", "loss_curves.png", "reliability.png", "results.csv", "results.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "o", "w.csv"]  # no temporary left
    assert main(args[:-1] + ["--quiet"]) == 0  # --force again: the model file is replaced too
    assert main([a for a in args if a != "--force"]) == 2
    assert "--out o exists and is not empty; pass --force" in capsys.readouterr().err


# --- Ctrl-C ----------------------------------------------------------------------------------


def _interrupt(args: list[str], cwd: Path, when: object) -> subprocess.CompletedProcess[str]:
    """Start the command, wait until ``when(pid, cwd, stderr_so_far)`` is true, send SIGINT."""
    proc = subprocess.Popen(command(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while proc.poll() is None and not when(proc.pid, cwd, "".join(err)) and time.monotonic() < deadline:
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(err))


def _loading_torch(pid: int, cwd: Path, err: str) -> bool:
    # torch's library is being mapped: the interpreter is inside `import dropkit`, past its first
    # line (which installs the start-up handler), and still loading.
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _writing(pid: int, cwd: Path, err: str) -> bool:
    return any(p.name.startswith(".o.partial") for p in cwd.iterdir())


def _training(pid: int, cwd: Path, err: str) -> bool:
    return "seed 0 done" in err  # the plain progress line of the first seed; the second is training


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize("stage", ["start-up", "training", "writing"])
def test_ctrl_c_leaves_nothing_or_everything(stage, tmp_path):
    write_csv(tmp_path / "d.csv", ["a", "b", "label"], [[i / 7, (i * 3) % 5, i % 2] for i in range(60)])
    before = snapshot(tmp_path)
    # Training shows its progress bar (the signal to interrupt); the other stages run quiet, so the
    # interrupt's line is all there is on stderr.
    quiet = ["--epochs", "1", "--quiet", "--seeds", "1"]
    extra = ["--epochs", "400", "--seeds", "2"] if stage == "training" else quiet
    args = ["train", "--data", "d.csv", "--target", "label", "--out", "o", "--save", "m.pt", *extra,
            "--mc-samples", "2", "--hidden", "4", "--p", "0", "0.5"]
    when = {"start-up": _loading_torch, "training": _training, "writing": _writing}[stage]
    for _attempt in range(3):  # the writing stage lasts about a second; retry if the signal missed it
        proc = _interrupt(args, tmp_path, when)
        if proc.returncode == 130:
            break
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        # The signal came too late (or during the final renames, which complete): everything is there.
        assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
            "gap_nll.png", "loss_curves.png", "reliability.png", "results.csv", "results.json"]
        assert load_model(tmp_path / "m.pt").task == "classification"
        for path in (tmp_path / "o", tmp_path / "m.pt"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.rstrip().splitlines()
    assert lines[-1].startswith("dropkit") and "interrupted" in lines[-1]
    if stage != "training":
        assert len(lines) == 1, proc.stderr
    assert snapshot(tmp_path) == before  # nothing of the results or the model, no temporary left
    assert not (tmp_path / "o").exists() and not (tmp_path / "dropkit-runs").exists()
