"""The dropkit command, run in subprocesses on small generated data."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit.app.cli import main
from dropkit.app.data import DataError, load_file, stratified_split
from dropkit.app.report import reading
from dropkit.app.training import RunResult, TrainConfig, build_model, prepare

TINY = ["--epochs", "2", "--seeds", "2", "--mc-samples", "4", "--hidden", "16", "--quiet"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "dropkit", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    with (d / "cls.csv").open("w") as f:
        f.write("a,b,c,label\n")
        f.writelines(f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t}\n" for r, t in zip(x, label, strict=True))
    np.savez(d / "reg.npz", X=x, y=x @ np.array([1.0, -2.0, 0.5]))
    return {"dir": d, "cls": d / "cls.csv", "reg": d / "reg.npz"}


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def option_blocks(text: str) -> dict[str, str]:
    """The help's option entries: first option string -> its whole entry, whitespace collapsed."""
    blocks: dict[str, str] = {}
    section = text.split("options:", 1)[1].split("\n\n", 1)[0]
    for line in section.splitlines()[1:]:
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            blocks[name] = line
        else:
            blocks[name] += line
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def test_help_lists_every_default_once_and_marks_the_required(capsys):
    from dropkit.app.cli import _build_parser

    top = run("--help")
    assert top.returncode == 0
    for command in ("demo", "train", "predict", "bench"):
        assert command in top.stdout
    commands = _build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("demo", "train", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "``" not in text and "`" not in text  # no markup
        blocks = option_blocks(text)
        for action in commands[command]._actions:
            if not action.option_strings or action.dest == "help":
                continue
            block = blocks[action.option_strings[0]]
            assert block.count("default") <= 1 and "(default: None)" not in block, block
            if action.required:
                assert block.endswith("(required)"), block
            elif action.default is not None and not isinstance(action.default, bool):
                shown = action.default if not isinstance(action.default, list) else " ".join(
                    f"{v:g}" for v in action.default)
                assert f"(default: {shown:g})" in block if isinstance(shown, float) else (
                    f"(default: {shown})" in block), block
    demo, train = help_text(capsys, "demo"), help_text(capsys, "train")
    assert "(default: 0 0.2 0.5)" in demo and "(default: 0 0.1 0.2 0.3 0.5)" in train
    assert "two hidden layers of 256" in demo.split("options:")[0]  # what the default model is
    for text in (demo, train):  # the defaults that differ are explained in both
        assert "demo and train differ in their defaults" in text
    predict = help_text(capsys, "predict")
    for column in ("predictive_entropy", "mutual_information", "variance", "total_variance", "epistemic"):
        assert column in predict
    bench = help_text(capsys, "bench")
    assert "(default: 4096 65536 1048576 16777216)" in bench and "tensor dtypes" in bench


def test_demo_smoke_writes_files_and_is_deterministic(tmp_path, capsys):
    args = ["demo", "--train-size", "60", "--p", "0", "0.5", *TINY]
    first = run(*args, "--out", str(tmp_path / "a"))
    second = run(*args, "--out", str(tmp_path / "b"))
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    table = first.stdout.split("Reading:")[0]
    assert table == second.stdout.split("Reading:")[0] and "0.5" in table and "test NLL" in table
    for name in ("loss_curves.png", "gap_nll.png", "reliability.png", "results.json", "results.csv"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
        assert (tmp_path / "a" / name).read_bytes()[:4] == b"\x89PNG" or not name.endswith(".png")
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["runs"] == b["runs"] and a["reading"] == b["reading"]
    capsys.readouterr()
    assert main([*args, "--seed", "7", "--json", "--out", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] != a["summary"]

    # The summary is the mean and standard error of the runs, recomputed here with numpy.
    assert len(a["runs"]) == 4 and sorted({r["config"]["seed"] for r in a["runs"]}) == [0, 1]
    for row in a["summary"]:
        values = [r["metrics"]["test_nll"] for r in a["runs"] if r["config"]["p"] == row["p"]]
        assert row["test_nll"]["mean"] == pytest.approx(np.mean(values))
        assert row["test_nll"]["se"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(2))
        assert all(len(r["test_loss"]) == 2 for r in a["runs"])
    for r in a["runs"]:
        m = r["metrics"]
        assert m["gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
        if r["config"]["p"] == 0:  # no dropout: every MC pass is the deterministic model
            assert m["mc_acc"] == m["test_acc"] and m["mc_nll"] == pytest.approx(m["test_nll"], rel=1e-5)
    with (tmp_path / "a" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["p"]) for r in rows] == [0.0, 0.5]
    assert float(rows[1]["ece_mean"]) == pytest.approx(a["summary"][1]["ece"]["mean"])


def test_same_seed_same_init_and_split_for_every_rate():
    y = np.repeat(np.arange(3), 10)
    train, test = stratified_split(y, size=12, seed=3)
    assert len(train) == 12 and sorted(np.bincount(y[train]).tolist()) == [4, 4, 4]
    assert np.array_equal(train, stratified_split(y, size=12, seed=3)[0])
    assert not np.array_equal(train, stratified_split(y, size=12, seed=4)[0])
    a = build_model(5, 3, TrainConfig(p=0.0, seed=3))
    b = build_model(5, 3, TrainConfig(p=0.5, input_p=0.2, seed=3))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in ("fc1.weight", "fc2.bias"))
    assert not torch.equal(a.fc1.weight, build_model(5, 3, TrainConfig(seed=4)).fc1.weight)


def test_standardization_uses_training_rows_only(files):
    data = load_file(files["cls"], target="label")
    train, test = stratified_split(data.y, 0.25, seed=0)
    prep = prepare(data, train, test)
    mean, std = data.x[train].mean(0), data.x[train].std(0)
    assert np.allclose(prep.x_test.numpy(), (data.x[test] - mean) / std, atol=1e-5)
    assert data.classes == ["no", "yes"] and np.array_equal(data.y, (data.x[:, 0] + 0.5 * data.x[:, 1] > 0))
    assert abs(np.mean(data.y[test]) - np.mean(data.y)) < 0.05  # stratified


def test_train_save_predict_classification(files, tmp_path):
    model = tmp_path / "m.pt"
    proc = run("train", "--data", str(files["cls"]), "--target", "label", "--p", "0", *TINY,
               "--out", str(tmp_path / "o"), "--save", str(model))
    assert proc.returncode == 0, proc.stderr
    written = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"loss_curves.png", "reliability.png", "results.csv"} <= written
    state = torch.load(model, weights_only=True)
    assert state["format"] == "dropkit-model" and state["config"]["classes"] == ["no", "yes"]
    out = tmp_path / "pred.csv"
    proc = run("predict", "--model", str(model), "--data", str(files["cls"]), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    # p = 0: the prediction is the plain forward pass, recomputed from the saved tensors.
    x = np.loadtxt(files["cls"], delimiter=",", skiprows=1, usecols=(0, 1, 2))
    scaler, sd = state["scaler"], state["state_dict"]
    z = torch.tensor((x - scaler["mean"].numpy()) / scaler["std"].numpy(), dtype=torch.float32)
    hidden = torch.relu(z @ sd["fc1.weight"].T + sd["fc1.bias"])
    probs = torch.softmax(hidden @ sd["fc2.weight"].T + sd["fc2.bias"], 1)
    assert len(rows) == 90
    assert [r["prediction"] for r in rows] == [["no", "yes"][i] for i in probs.argmax(1).tolist()]
    conf = probs.max(1).values
    assert np.allclose([float(r["confidence"]) for r in rows], conf.numpy(), atol=1e-5)
    entropy = -(probs * probs.log()).sum(1)
    assert np.allclose([float(r["predictive_entropy"]) for r in rows], entropy.numpy(), atol=1e-5)


def test_train_predict_regression_mc_variance(files, tmp_path, capsys):
    model = tmp_path / "r.pt"
    proc = run("train", "--data", str(files["reg"]), "--p", "0.3", "--input-p", "0.2", *TINY,
               "--out", str(tmp_path / "o"), "--save", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["task"] == "regression" and "reliability.png" not in doc["files"]
    argv = ["predict", "--model", str(model), "--data", str(files["reg"]), "--mc-samples", "8", "--json"]
    first = run(*argv)
    capsys.readouterr()
    assert main(argv) == 0
    rows = json.loads(first.stdout)
    assert rows == json.loads(capsys.readouterr().out) and len(rows) == 90
    assert all(r["variance"] > 0 and r["total_variance"] > r["variance"] for r in rows)


def _runs(nll: dict[float, list[float]], acc: dict[float, list[float]]) -> list[RunResult]:
    def metrics(p: float, s: int) -> dict[str, float]:
        return {"train_acc": 1.0, "test_acc": acc[p][s], "gap": 1.0 - acc[p][s], "test_nll": nll[p][s],
                "mc_nll": nll[p][s] - 0.01}

    return [RunResult(TrainConfig(p=p, seed=s), metrics(p, s)) for p in nll for s in range(len(nll[p]))]


def test_reading_follows_the_numbers():
    # Seed-to-seed spread is large but every seed improves by about 0.1 at p=0.5: a clear win.
    helps = reading(_runs({0.0: [0.5, 0.9, 0.7], 0.5: [0.41, 0.79, 0.6]},
                          {0.0: [0.90, 0.80, 0.85], 0.5: [0.95, 0.86, 0.90]}), "classification")
    assert helps.startswith("p=0.5 gives the lowest test NLL (0.600 vs 0.700 at p=0")
    assert "beyond 2 standard errors" in helps and "gap shrinks from 0.150 at p=0 to 0.097 at p=0.5" in helps
    # Differences of mixed sign: lower on average but within the noise.
    noisy = reading(_runs({0.0: [0.5, 0.9, 0.7], 0.5: [0.6, 0.7, 0.75]},
                          {0.0: [0.90, 0.80, 0.85], 0.5: [0.85, 0.84, 0.85]}), "classification")
    assert noisy.startswith("dropout does not clearly help test NLL: p=0.5") and "within 2 standard" in noisy
    worse = reading(_runs({0.0: [0.5, 0.6], 0.2: [0.7, 0.8]}, {0.0: [0.9, 0.9], 0.2: [0.8, 0.8]}),
                    "classification")
    assert "the best test accuracy is at p=0 (0.900 ±0.000)" in worse and "gap grows" in worse
    assert worse.startswith("dropout does not help test NLL here: p=0 has the lowest (0.550 ±0.050)")
    # Every statement carries a ±, the gap's included.
    assert all("±" in part for part in worse.split("; ")), worse
    # Paired differences -0.09, -0.11, -0.10: mean -0.1, standard error 0.01 / sqrt(3) = 0.006, and
    # -0.1 / 0.7 = -14% of the baseline loss.
    assert "paired difference -0.100 ±0.006 (-14%), beyond 2 standard errors" in helps
    assert "gap shrinks from 0.150 at p=0 to 0.097 at p=0.5 (-0.053 ±0.003, beyond" in helps


def test_reading_of_a_negative_baseline_has_a_sign_and_no_percentage():
    # A regression's Gaussian NLL can be negative: -0.008 at p=0, about 0.010 lower at p=0.5. The
    # difference is negative (better), and no share of a negative or near-zero base is given.
    base, better = [-0.006, -0.008, -0.010], [-0.015, -0.019, -0.020]
    runs = [RunResult(TrainConfig(p=p, seed=s), {"train_rmse": 0.5, "test_rmse": 1.0 - p / 10,
                                               "gap": 0.5 - p / 10, "test_nll": nll[s], "mc_nll": nll[s]})
            for p, nll in ((0.0, base), (0.5, better)) for s in range(3)]
    text = reading(runs, "regression", "validation")
    diffs = np.subtract(better, base)
    expected = f"paired difference {diffs.mean():+.3f} ±{diffs.std(ddof=1) / math.sqrt(3):.3f}, beyond"
    assert text.startswith("p=0.5 gives the lowest validation NLL (-0.018 vs -0.008 at p=0, ")
    assert expected in text
    assert "%" not in text and all("±" in part for part in text.split("; ")), text


class Payload:
    """Unpickled, this creates the folder ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.marker,)


def test_the_pickle_payload_is_armed(tmp_path):
    # The payload the evil.pt case carries does run when unpickled unsafely, so the check that the
    # marker is absent after `dropkit predict --model evil.pt` means something.
    pickle.loads(pickle.dumps(Payload(tmp_path / "pwned")))
    assert (tmp_path / "pwned").is_dir()


@pytest.fixture(scope="module")
def bad(files) -> dict[str, Path]:
    d = files["dir"]
    (d / "data.txt").write_text("a,b\n1,2\n")
    (d / "text.csv").write_text("a,colour,label\n1,red,0\n2,blue,1\n")
    (d / "one.csv").write_text("a,label\n1,0\n2,0\n3,0\n")
    (d / "nan.csv").write_text("a,b,label\n1,2,0\n1,,1\n3,inf,0\n4,5,1\n")
    (d / "garbage.npz").write_bytes(b"\x00\x01 not an archive")
    (d / "binary.csv").write_bytes(b"a,label\n\xff\xfe,1\n")
    torch.save({"weights": torch.zeros(3)}, d / "plain.pt")
    (d / "evil.pt").write_bytes(pickle.dumps(Payload(d / "pwned")))
    (d / "dup.csv").write_text("a,a,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    (d / "nolabel.csv").write_text("a,label\n1,cat\n2,\n3,dog\n4,cat\n")
    return {p.name: p for p in d.iterdir()}


ERRORS = [
        (["train", "--data", "missing.csv", "--target", "y"], ["missing.csv", "no such file"]),
        (["train", "--data", "{data.txt}"], ["unknown extension", ".txt"]),
        (["train", "--data", "{cls.csv}", "--target", "nope"], ["'nope'", "a, b, c, label"]),
        (["train", "--data", "{cls.csv}"], ["--target"]),
        (["train", "--data", "{text.csv}", "--target", "label"], ["non-numeric", "colour"]),
        (["train", "--data", "{one.csv}", "--target", "label"], ["at least 2 classes"]),
        (["train", "--data", "{nan.csv}", "--target", "label"],
         ["NaN or inf", "2 row(s)", "lines 3, 4", "column(s): b"]),
        (["train", "--data", "{garbage.npz}"], ["garbage.npz"]),
        (["train", "--data", "{binary.csv}", "--target", "label"], ["cannot read"]),
        (["train", "--data", "{cls.csv}", "--target", "label", "--p", "1.0"], ["[0, 1)", "1.0"]),
        (["demo", "--p", "0.2", "-0.1"], ["[0, 1)", "-0.1"]),
        (["predict", "--model", "{plain.pt}", "--data", "{cls.csv}"], ["not a dropkit model"]),
        (["predict", "--model", "{evil.pt}", "--data", "{cls.csv}"], ["not a dropkit model"]),
        (["predict", "--model", "{cls.csv}", "--data", "{cls.csv}"], ["not a dropkit model"]),
        (["train", "--data", "{dup.csv}", "--target", "label"], ["repeats column name(s) 'a'"]),
        (["train", "--data", "{nolabel.csv}", "--target", "label"], ["empty label in 1 row(s)", "lines 3"]),
        (["train", "--data", "{cls.csv}", "--target", "label", "--val-fraction", "0"], ["(0, 1)", "got 0"]),
]
# A subprocess costs a torch import (about 1.5 s of CPU), so three cases run as a real command and
# the others call main() in this process, where stderr and the exit code are checked the same way.
IN_SUBPROCESS = (0, 9, 12)


def _argv(bad: dict[str, Path], args: list[str]) -> list[str]:
    return [bad[a[1:-1]].as_posix() if a.startswith("{") else a for a in args]


@pytest.mark.parametrize("case", IN_SUBPROCESS)
def test_user_errors_in_a_subprocess(bad, case):
    args, needles = ERRORS[case]
    assert_user_error(run(*_argv(bad, args), cwd=bad["cls.csv"].parent), *needles)
    assert not (bad["cls.csv"].parent / "pwned").exists()  # evil.pt's payload never ran


@pytest.mark.parametrize("case", [i for i in range(len(ERRORS)) if i not in IN_SUBPROCESS])
def test_user_errors_in_process(bad, case, capsys, monkeypatch):
    args, needles = ERRORS[case]
    monkeypatch.chdir(bad["cls.csv"].parent)
    try:
        code = main(_argv(bad, args))
    except SystemExit as e:  # argparse rejects options by exiting
        code = e.code
    assert_user_error(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), *needles)
    assert not (bad["cls.csv"].parent / "pwned").exists()


def test_library_raises_data_error(bad):
    with pytest.raises(DataError, match="only 1"):
        load_file(bad["one.csv"], target="label")
    with pytest.raises(DataError, match="non-numeric feature column\\(s\\): colour"):
        load_file(bad["text.csv"], target="label")




def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    # Spreadsheet programs save "CSV UTF-8" with a BOM before the header; it is not part of a name.
    (tmp_path / "bom.csv").write_text("a,b,y\n0.5,1,0\n-2,3,1\n4,-1,0\n", encoding="utf-8-sig")
    assert load_file(tmp_path / "bom.csv", target="a", task="regression").feature_names == ["b", "y"]
    data = load_file(tmp_path / "bom.csv", target="y")
    assert data.feature_names == ["a", "b"]
    assert np.array_equal(data.x, np.array([[0.5, 1.0], [-2.0, 3.0], [4.0, -1.0]]))


def test_one_seed_prints_the_table_without_error_bars(files, tmp_path, capsys):
    args = ["train", "--data", str(files["cls"]), "--target", "label", "--p", "0", "0.3", *TINY,
            "--seeds", "1", "--out", str(tmp_path / "o")]
    assert main(args) == 0, capsys.readouterr().err
    table = capsys.readouterr().out.split("Reading:")[0]
    assert "±" not in table
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    for line, p in zip(table.splitlines()[2:4], (0.0, 0.3), strict=True):
        run = next(r for r in doc["runs"] if r["config"]["p"] == p)
        cells = line.split()
        assert float(cells[0]) == p and float(cells[4]) == pytest.approx(run["metrics"]["test_nll"], abs=5e-4)
