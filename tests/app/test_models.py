"""The guide's two models and its example scripts."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dropkit
from dropkit.app.models import SimpleCNNWithDropout, SimpleModelWithDropout

ROOT = Path(__file__).resolve().parents[2]


def test_mlp_matches_the_guide():
    model = SimpleModelWithDropout(dropout_prob=0.5)
    assert [m.__class__.__name__ for m in model.children()] == ["Identity", "Linear", "Dropout", "Linear"]
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (64, 128, 10)
    assert isinstance(model.dropout, dropkit.Dropout) and model.dropout.p == 0.5
    assert model(torch.randn(32, 64)).shape == (32, 10)


def test_mlp_eval_is_deterministic_and_dropout_replaceable():
    model = SimpleModelWithDropout(0.3, dropout=torch.nn.Dropout, hidden=16, input_dropout=0.1).eval()
    x = torch.randn(4, 64)
    assert isinstance(model.dropout, torch.nn.Dropout)
    assert torch.equal(model(x), model.fc2(torch.relu(model.fc1(x))))


def test_cnn_matches_the_guide():
    model = SimpleCNNWithDropout(dropout_prob=0.5)
    assert model.fc1.in_features == 16 * 32 * 32
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    small = SimpleCNNWithDropout(0.2, image_size=8, channels=4, in_channels=1)
    assert small(torch.randn(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize("kwargs", [{"hidden": 0}, {"in_features": -1}, {"num_classes": 2.5}])
def test_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        SimpleModelWithDropout(0.5, **kwargs)
    with pytest.raises(ValueError, match="even"):
        SimpleCNNWithDropout(image_size=7)
    with pytest.raises(ValueError, match="p must"):
        SimpleModelWithDropout(1.5)


@pytest.mark.parametrize("script", ["guide_mlp.py", "guide_cnn.py"])
def test_guide_scripts_print_output_shape(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, check=True
    ).stdout
    assert "Output shape: (32, 10)" in out


def test_worked_example_script():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "guide_worked_example.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "eval [1.0, 2.0, 3.0, 4.0, 5.0]" in out
    assert "eval [0.6, 1.2, 1.8, 2.4, 3.0]" in out
