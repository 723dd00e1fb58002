"""What a patched model and its report print: dropkit's classes say they are dropkit's."""

import importlib

import pytest
import torch
from torch import nn

import dropkit
from dropkit._names import public_name
from dropkit._select import TORCH_DROPOUTS
from dropkit.layers._base import RateModule
from dropkit.patch import patch


def resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("cls", TORCH_DROPOUTS, ids=lambda c: c.__name__)
def test_patch_report_names_both_classes_with_their_modules(cls):
    model = nn.Sequential(nn.Linear(2, 2), cls(0.25))
    line = str(patch(model, seed=1)).splitlines()[1]
    assert line == f"  1: torch.nn.{cls.__name__} -> dropkit.{cls.__name__} (p=0.25)"
    original, replacement = line.split(": ", 1)[1].split(" (")[0].split(" -> ")
    # The names import the very classes: torch's that was replaced, dropkit's now in the model.
    assert resolve(original) is cls and resolve(replacement) is type(model[1])
    assert repr(model[1]).startswith(f"dropkit.{cls.__name__}(p=0.25")


def test_attention_report_and_repr():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2)
    text = str(patch(layer, seed=0))
    assert "  self_attn: torch.nn.MultiheadAttention -> dropkit.MultiheadAttention (p=0.1)" in text
    assert repr(layer.self_attn).startswith("dropkit.MultiheadAttention(")
    seed = layer.self_attn.attn_dropout.stream_state()["seed"]
    assert f"(attn_dropout): dropkit.Dropout(p=0.1, inplace=False, seed={seed})" in repr(layer)


def test_repr_says_dropkit_and_the_seed_only_when_seeded():
    for cls in (dropkit.Dropout, dropkit.Dropout2d, dropkit.AlphaDropout):
        torch_cls = getattr(nn, cls.__name__)
        assert repr(cls(0.3)) == "dropkit." + repr(torch_cls(0.3))
        assert repr(cls(0.3, seed=42)) == "dropkit." + repr(torch_cls(0.3))[:-1] + ", seed=42)"
    assert repr(dropkit.DropPath(0.1, seed=5)).startswith("dropkit.DropPath(") and "seed=5" in repr(
        dropkit.DropPath(0.1, seed=5))


def test_a_users_subclass_keeps_its_name_and_a_torch_base_does_not_win():
    class Mine(dropkit.Dropout):
        pass

    assert repr(Mine(0.2, seed=1)) == "Mine(p=0.2, inplace=False, seed=1)"

    # A dropkit layer that also inherits torch's Dropout: the stream base comes first, so its
    # name and extra_repr win over nn.Module's and nn.Dropout's.
    class Both(RateModule, nn.Dropout):
        __module__, __qualname__ = "dropkit.layers.dropout", "Both"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    layer = Both(0.5, seed=42)
    assert isinstance(layer, nn.Dropout)
    assert repr(layer) == "dropkit.layers.dropout.Both(p=0.5, inplace=False, seed=42)"


def test_public_name_walks_down_to_the_shortest_import():
    assert public_name(nn.modules.dropout.Dropout) == "torch.nn.Dropout"
    assert public_name(dropkit.layers.dropout.Dropout) == "dropkit.Dropout"
    assert public_name(torch.Tensor) == "torch.Tensor"
