"""The demo teaches the guide's lesson: its default set-up overfits without dropout, and dropout cures it.

These tests run the demo's default configuration (model, width, epochs, learning rate, input
rate) with three seeds instead of five and two rates instead of three, and recompute every
claim from the per-run numbers in results.json with numpy, independently of dropkit.app.report.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dropkit.app.cli import main
from dropkit.app.data import Dataset
from dropkit.app.models import WideMLPWithDropout
from dropkit.app.plots import SPARSE_BIN, plot_gap_and_nll, write_plots
from dropkit.app.report import legend
from dropkit.app.training import RunResult, TrainConfig, build_model, prepare


@pytest.fixture(scope="module")
def lesson(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("lesson")
    # MC passes do not change the deterministic metrics checked here, so a few are enough.
    args = ["demo", "--seeds", "3", "--p", "0", "0.5", "--mc-samples", "5", "--quiet", "--out", str(out)]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text()), str(out)


def _runs(doc: dict, p: float) -> list[dict]:
    return sorted((r for r in doc["runs"] if r["config"]["p"] == p), key=lambda r: r["config"]["seed"])


def test_the_demo_default_is_the_wide_mlp_with_srivastava_rates(lesson):
    doc, _ = lesson
    config = _runs(doc, 0.5)[0]["config"]
    assert (config["model"], config["hidden"], config["input_p"]) == ("mlp", 256, 0.2)
    # The p = 0 run is the model without any dropout, input dropout included.
    assert _runs(doc, 0.0)[0]["config"]["input_p"] == 0.0


def test_without_dropout_the_test_loss_turns_upward(lesson):
    doc, _ = lesson
    curve = np.mean([r["test_loss"] for r in _runs(doc, 0.0)], axis=0)
    lowest = int(np.argmin(curve))
    assert lowest < len(curve) // 2, curve
    assert curve[-1] > 1.05 * curve[lowest], (curve[lowest], curve[-1])
    # Not one noisy epoch: the last ten epochs are all above the minimum and, on average, rising.
    assert (curve[-10:] > curve[lowest]).all()
    assert np.polyfit(np.arange(len(curve) // 2), curve[len(curve) // 2:], 1)[0] > 0


def test_dropout_lowers_test_nll_beyond_two_standard_errors(lesson):
    doc, _ = lesson
    base = np.array([r["metrics"]["test_nll"] for r in _runs(doc, 0.0)])
    drop = np.array([r["metrics"]["test_nll"] for r in _runs(doc, 0.5)])
    diff = drop - base  # paired: the same seed shares split, initial weights and batch order
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert diff.mean() < -2 * se, (diff, se)
    # Five seeds and three rates (the full demo) give -17%; these three seeds give -16%.
    assert diff.mean() / base.mean() < -0.12, diff.mean() / base.mean()
    acc = np.array([r["metrics"]["test_acc"] for r in _runs(doc, 0.5)]) - np.array(
        [r["metrics"]["test_acc"] for r in _runs(doc, 0.0)])
    assert acc.mean() > -0.005, acc


def test_the_reading_is_the_numbers(lesson):
    doc, _ = lesson
    base = np.mean([r["metrics"]["test_nll"] for r in _runs(doc, 0.0)])
    drop = np.mean([r["metrics"]["test_nll"] for r in _runs(doc, 0.5)])
    expected = f"p=0.5 gives the lowest test NLL ({drop:.3f} vs {base:.3f} at p=0, paired difference "
    assert doc["reading"].startswith(expected), doc["reading"]
    assert "beyond 2 standard errors" in doc["reading"].split(";")[0]


def test_index_html_is_self_contained(lesson):
    doc, out = lesson
    page = (Path(out) / "index.html").read_text(encoding="utf-8")
    assert doc["reading"].replace('"', "&quot;").replace("'", "&#x27;") in page
    assert "test NLL" in page and "ECE: expected calibration error" in page
    # Every image is inline, and is byte for byte the PNG beside it.
    sources = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', page)
    assert sorted(name for _, name in sources) == ["gap_nll.png", "loss_curves.png", "reliability.png"]
    for src, name in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (Path(out) / name).read_bytes()
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_cnn_runs_end_to_end(tmp_path, capsys):
    args = ["demo", "--model", "cnn", "--train-size", "60", "--p", "0", "0.5", "--epochs", "2",
            "--seeds", "2", "--mc-samples", "3", "--hidden", "16", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Reading: " in printed and "MC acc / MC NLL" in printed
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {r["config"]["model"] for r in doc["runs"]} == {"cnn"} and len(doc["runs"]) == 4
    assert {"index.html", "loss_curves.png", "gap_nll.png", "reliability.png"} <= {
        p.name for p in tmp_path.iterdir()}
    assert all(len(r["test_loss"]) == 2 and math.isfinite(r["metrics"]["test_nll"]) for r in doc["runs"])


def test_cnn_is_the_guides_cnn_on_8x8_images():
    model = build_model(64, 10, TrainConfig(model="cnn", hidden=32, p=0.5, seed=4)).eval()
    sd = model.state_dict()
    x = torch.randn(7, 64)
    # The guide's layers written out with torch.nn.functional on the reshaped pixels.
    conv = F.conv2d(x.view(7, 1, 8, 8), sd["1.conv1.weight"], sd["1.conv1.bias"], padding=1)
    z = F.max_pool2d(F.relu(conv), 2)
    h = F.relu(z.flatten(1) @ sd["1.fc1.weight"].T + sd["1.fc1.bias"])
    expected = h @ sd["1.fc2.weight"].T + sd["1.fc2.bias"]
    assert sd["1.conv1.weight"].shape == (16, 1, 3, 3)
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="in_features=63"):
        build_model(63, 10, TrainConfig(model="cnn"))


def test_wide_mlp_matches_its_formula_and_seeds_each_dropout_layer():
    model = build_model(64, 10, TrainConfig(model="mlp", hidden=32, p=0.5, input_p=0.2, seed=1))
    assert isinstance(model, WideMLPWithDropout)
    sd = model.state_dict()
    x = torch.randn(5, 64)
    h = F.relu(x @ sd["fc1.weight"].T + sd["fc1.bias"])
    h = F.relu(h @ sd["fc2.weight"].T + sd["fc2.bias"])
    torch.testing.assert_close(model.eval()(x), h @ sd["fc3.weight"].T + sd["fc3.bias"])
    # Same seed, same weights at any rate; each dropout layer draws its own masks.
    other = build_model(64, 10, TrainConfig(model="mlp", hidden=32, p=0.0, seed=1))
    assert all(torch.equal(sd[k], v) for k, v in other.state_dict().items() if k.startswith("fc"))
    model.train()
    ones = torch.ones(4, 32)
    assert not torch.equal(model.dropout1(ones), model.dropout2(ones))
    with pytest.raises(ValueError, match="'rnn'"):
        TrainConfig(model="rnn")


def test_one_scale_standardizes_all_pixels_together():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(30, 4)).astype(float)
    x[:20, 3] = 0.0  # a pixel never inked in the training rows
    data = Dataset(x, np.arange(30) % 2, "classification", list("abcd"), "y", ["0", "1"])
    prepared = prepare(data, np.arange(20), np.arange(20, 30), one_scale=True)
    train = x[:20]
    expected = (x[20:] - train.mean()) / train.std()
    np.testing.assert_allclose(prepared.x_test.numpy(), expected, rtol=1e-6)


def test_progress_off_a_terminal_is_a_few_plain_lines(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "dropkit", "demo", "--model", "guide-mlp", "--train-size", "60",
         "--p", "0", "0.5", "--epochs", "3", "--seeds", "3", "--mc-samples", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 4, lines  # the plan, then one line per seed
    assert [line.split(" (")[0] for line in lines[1:]] == [f"dropkit: seed {s} done" for s in range(3)]


def test_train_calls_its_held_out_rows_validation(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    np.savez(tmp_path / "d.npz", X=x, y=(x[:, 0] > 0).astype(np.int64))
    args = ["train", "--data", str(tmp_path / "d.npz"), "--p", "0", "0.5", "--epochs", "2", "--seeds", "2",
            "--mc-samples", "3", "--hidden", "8", "--quiet", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[:6] == ["p", "train", "acc", "val", "acc", "gap"] and "test" not in header
    reading_line = next(line for line in printed.splitlines() if line.startswith("Reading: "))
    assert "validation NLL" in reading_line and not re.search(r"\btest\b", reading_line)
    assert "on the validation rows" in printed and "on the test rows" not in printed
    with pytest.raises(ValueError, match="'holdout'"):
        legend("classification", held_out="holdout")


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib figures the plot functions close, kept for inspection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept: list = []
    monkeypatch.setattr(plt, "close", kept.append)
    return kept


def _run(p: float, seed: int, metrics: dict[str, float], probs: torch.Tensor | None = None) -> RunResult:
    return RunResult(TrainConfig(p=p, seed=seed), metrics, [1.0, 0.5, 0.4], [1.0, 0.8, 0.9], probs)


def test_the_gap_axis_starts_at_zero(tmp_path, figures):
    runs = [_run(p, s, {"gap": 0.07 + p / 100 + s / 1000, "test_nll": 0.3, "mc_nll": 0.3})
            for p in (0.0, 0.5) for s in range(2)]
    plot_gap_and_nll(runs, "classification", tmp_path / "g.png")
    bottom, top = figures[0].axes[0].get_ylim()
    assert bottom == 0.0 and top > 0.075


def test_reliability_shows_p0_and_the_best_p_pooled_with_sparse_bins_faint(tmp_path, figures):
    gen = torch.Generator().manual_seed(0)
    labels = {s: torch.randint(0, 3, (50,), generator=gen) for s in range(2)}
    runs = []
    for p, nll in ((0.0, 0.5), (0.2, 0.3), (0.5, 0.4)):
        for s in range(2):
            probs = torch.softmax(3 * torch.randn(50, 3, generator=gen), dim=1)
            runs.append(_run(p, s, {"gap": 0.1, "test_nll": nll, "mc_nll": nll}, probs))
    write_plots(runs, "classification", tmp_path, labels)
    fig = figures[-1]
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["p=0", "p=0.2"]  # p=0.2 has the lowest NLL
    assert "2 seeds pooled, 100 test predictions per panel" in fig._suptitle.get_text()
    # The accuracy bars: one per non-empty bin, faint exactly where the bin holds few predictions.
    pooled = torch.cat([r.test_probs for r in runs if r.config.p == 0.0])
    conf = pooled.max(1).values
    counts = torch.bincount((torch.ceil(conf * 15) - 1).clamp(0, 14).long(), minlength=15)
    bars = [patch for patch in fig.axes[0].patches if patch.get_fill()]
    assert sorted(bar.get_alpha() for bar in bars) == sorted(
        0.25 if c < SPARSE_BIN else 0.9 for c in counts.tolist() if c > 0)
