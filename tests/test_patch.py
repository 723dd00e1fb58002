"""dropkit.patch: replacing, reporting, restoring and re-rating dropout in models dropkit did not build."""

import hashlib
import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit import rng
from dropkit.layers import StreamModule
from dropkit.patch import dropout_layers, patch, set_dropout, unpatch

TORCH_CLASSES = [
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
]


def spec_seed(base, name):
    """derive_seed as docs/rng.md defines it: BLAKE2b-64 of "philox-v1|base|name", little-endian."""
    digest = hashlib.blake2b(f"philox-v1|{base}|{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keep_from_words(n, p, seed, offset=0):
    """Keep-mask straight from the stream words: kept iff w >= round(p * 2**32)."""
    return rng.philox_words(seed, offset, n) >= round(p * 2**32)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.3)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.6, inplace=True))

    def forward(self, x):
        return self.block(self.drop(self.fc(x)))


@pytest.mark.parametrize("cls", TORCH_CLASSES, ids=lambda c: c.__name__)
def test_each_torch_class_is_replaced_or_reported(cls):
    model = nn.Sequential(nn.Identity(), cls(0.25, inplace=True))
    model.eval()
    report = patch(model)
    target = getattr(dropkit, cls.__name__, None)
    if target is None:
        assert type(model[1]) is cls
        (entry,) = report.unreplaced
        assert entry.name == "1" and "not available" in entry.reason
        return
    assert type(model[1]) is target and isinstance(model[1], StreamModule)
    assert (model[1].p, model[1].inplace, model[1].training) == (0.25, True, False)
    assert [(r.name, r.original, r.p) for r in report.replaced] == [("1", cls.__name__, 0.25)]


def test_seeded_layers_get_the_named_stream():
    model = Net()
    report = patch(model, seed=123)
    seeds = {r.name: r.seed for r in report.replaced}
    assert seeds == {"drop": spec_seed(123, "drop"), "block.1": spec_seed(123, "block.1")}
    x = torch.randn(4, 6, dtype=torch.float64)
    y = model.drop(x)
    keep = keep_from_words(x.numel(), 0.3, spec_seed(123, "drop")).view(x.shape)
    torch.testing.assert_close(
        y, torch.where(keep, x * (1 / 0.7), torch.zeros((), dtype=x.dtype)), rtol=0, atol=0
    )


def test_seeded_patch_is_stable_across_instances_and_differs_by_name():
    x = torch.randn(3, 6)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    patch(a, seed=7)
    patch(b, seed=7)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a.drop(torch.ones(64)), a.block[1](torch.ones(64)))


def test_unseeded_patch_follows_torch_manual_seed_and_adds_no_buffers():
    model = Net()
    before = set(model.state_dict())
    patch(model)
    assert set(model.state_dict()) == before
    x = torch.randn(3, 6)
    torch.manual_seed(5)
    y1 = model(x)
    torch.manual_seed(5)
    assert torch.equal(model(x), y1)


def test_eval_output_unchanged_and_training_state_kept():
    model = Net()
    x = torch.randn(2, 6)
    model.eval()
    expected = model(x)
    patch(model, seed=0)
    assert not model.drop.training and not model.block[1].training
    assert torch.equal(model(x), expected)


def test_include_exclude_filters():
    model = Net()
    assert [r.name for r in patch(model, include="block.*").replaced] == ["block.1"]
    model = Net()
    assert [r.name for r in patch(model, exclude=["block.*"]).replaced] == ["drop"]
    model = Net()
    report = patch(model, include=lambda name, m: m.p > 0.5)
    assert [r.name for r in report.replaced] == ["block.1"]
    model = Net()
    assert [r.name for r in patch(model, include=nn.Dropout, exclude="drop").replaced] == ["block.1"]


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"include": 3}, TypeError),
        ({"exclude": [1.5]}, TypeError),
        ({"seed": -1}, ValueError),
        ({"seed": 2**64}, ValueError),
        ({"mask_storage": "packed"}, ValueError),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error):
    with pytest.raises(error, match=str(next(iter(kwargs.values()))).replace("[", r"\[").replace(".", r"\.")):
        patch(Net(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="list"):
        patch([nn.Dropout()])
    with pytest.raises(TypeError, match="int"):
        unpatch(3)
    with pytest.raises(TypeError, match="str"):
        dropout_layers("model")


def test_mask_storage_is_passed_on():
    model = Net()
    report = patch(model, mask_storage="seed")
    assert model.drop.mask_storage == "seed"
    assert [r.mask_storage for r in report.replaced] == ["seed", "seed"]
    model = nn.Sequential(nn.Dropout2d(0.3))
    (entry,) = patch(model, mask_storage="bool").replaced
    assert entry.mask_storage == getattr(model[0], "mask_storage", None)


def test_shared_module_stays_shared_and_unpatch_restores_identity():
    shared = nn.Dropout(0.2)
    model = nn.Sequential(nn.Linear(3, 3), shared, nn.ReLU(), shared)
    report = patch(model, seed=1)
    assert len(report.replaced) == 1 and model[1] is model[3] and model[1] is not shared
    assert unpatch(model) == ["1", "3"]
    assert model[1] is shared and model[3] is shared


def test_unpatch_carries_rate_and_mode_back():
    model = Net()
    original = model.drop
    patch(model)
    set_dropout(model, 0.45, include="drop")
    model.eval()
    unpatch(model)
    assert model.drop is original and type(original) is nn.Dropout
    assert original.p == 0.45 and not original.training


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return F.dropout(self.fc(x), 0.1, self.training)


class ReadsRate(nn.Module):
    """Stand-in for Hugging Face attention: keeps an nn.Dropout only to read its rate."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.1)

    def forward(self, q):
        return F.scaled_dot_product_attention(q, q, q, dropout_p=self.dropout.p if self.training else 0.0)


def test_report_lists_what_cannot_be_replaced():
    model = nn.Sequential(FunctionalNet(), nn.LSTM(8, 8, num_layers=2, dropout=0.2), ReadsRate())
    report = patch(model)
    reasons = {(u.name, u.type): u.reason for u in report.unreplaced}
    assert "dropout" in reasons[("0", "FunctionalNet")]
    assert "dropout=0.2" in reasons[("1", "LSTM")]
    reads = [u.reason for u in report.unreplaced if u.name == "2"]
    assert any("self.dropout.p" in r for r in reads) and any(
        "scaled_dot_product_attention" in r for r in reads
    )
    assert [r.name for r in report.replaced] == ["2.dropout"]
    assert "not replaced: 4" in str(report)


def test_root_module_is_reported():
    layer = nn.Dropout(0.5)
    report = patch(layer)
    assert report.replaced == [] and report.unreplaced[0].reason.startswith("the root module")


def test_subclass_with_own_forward_is_left_alone():
    class Custom(nn.Dropout):
        def forward(self, x):
            return x

    model = nn.Sequential(Custom(0.3))
    assert patch(model).replaced == [] and type(model[0]) is Custom


def test_dropout_layers_and_set_dropout():
    model = Net()
    model.extra = dropkit.Dropout(0.1)
    assert dropout_layers(model) == [
        ("drop", "Dropout", 0.3),
        ("block.1", "Dropout", 0.6),
        ("extra", "Dropout", 0.1),
    ]
    assert set_dropout(model, 0.05, include=["block.*", "extra"]) == ["block.1", "extra"]
    assert [layer.p for layer in dropout_layers(model)] == [0.3, 0.05, 0.05]
    for bad in (1.5, -0.1, float("nan"), "0.2"):
        with pytest.raises(ValueError, match="0.2|1.5|-0.1|nan"):
            set_dropout(model, bad)


# Stand-ins for the two third-party classes, with the public attributes of the real ones
# (timm: drop_prob, scale_by_keep; torchvision: p, mode). They check the lazy lookup through
# sys.modules and the argument mapping, not the real libraries, which are not installed here.
def _fake_third_party(monkeypatch):
    timm_drop = types.ModuleType("timm.layers.drop")
    tv_sd = types.ModuleType("torchvision.ops.stochastic_depth")

    class DropPath(nn.Module):
        def __init__(self, drop_prob=0.0, scale_by_keep=True):
            super().__init__()
            self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    class StochasticDepth(nn.Module):
        def __init__(self, p, mode):
            super().__init__()
            self.p, self.mode = p, mode

    timm_drop.DropPath, tv_sd.StochasticDepth = DropPath, StochasticDepth
    monkeypatch.setitem(sys.modules, "timm.layers.drop", timm_drop)
    monkeypatch.setitem(sys.modules, "torchvision.ops.stochastic_depth", tv_sd)
    return DropPath, StochasticDepth


def test_third_party_classes_through_stand_ins(monkeypatch):
    DropPath, StochasticDepth = _fake_third_party(monkeypatch)
    model = nn.Sequential(DropPath(0.1, scale_by_keep=False), StochasticDepth(0.2, "batch"))
    assert dropout_layers(model) == [("0", "DropPath", 0.1), ("1", "StochasticDepth", 0.2)]
    report = patch(model, seed=3)
    for index, name, p in ((0, "DropPath", 0.1), (1, "StochasticDepth", 0.2)):
        target = getattr(dropkit, name, None)
        if target is None:
            assert any(u.name == str(index) and "not available" in u.reason for u in report.unreplaced)
        else:
            assert type(model[index]) is target and model[index].p == p
            assert model[index].stream_state()["seed"] == spec_seed(3, str(index))
    if type(model[0]) is not DropPath:
        assert model[0].scale_by_keep is False
    if type(model[1]) is not StochasticDepth:
        assert model[1].mode == "batch"
    unpatch(model)
    assert type(model[0]) is DropPath and type(model[1]) is StochasticDepth


def test_torchvision_dropblock_through_a_stand_in(monkeypatch):
    # torchvision.ops.DropBlock2d/3d keep p, block_size, inplace and eps.
    tv_db = types.ModuleType("torchvision.ops.drop_block")

    class DropBlock2d(nn.Module):
        def __init__(self, p, block_size, inplace=False, eps=1e-6):
            super().__init__()
            self.p, self.block_size, self.inplace, self.eps = p, block_size, inplace, eps

    class DropBlock3d(DropBlock2d):
        pass

    tv_db.DropBlock2d, tv_db.DropBlock3d = DropBlock2d, DropBlock3d
    monkeypatch.setitem(sys.modules, "torchvision.ops.drop_block", tv_db)
    model = nn.Sequential(DropBlock2d(0.1, 5), DropBlock3d(0.2, 3), DropBlock2d(0.1, 3, eps=0.5))
    assert dropout_layers(model) == [("0", "DropBlock2d", 0.1), ("1", "DropBlock3d", 0.2),
                                     ("2", "DropBlock2d", 0.1)]
    report = patch(model, seed=3)
    assert type(model[0]) is dropkit.DropBlock2d and model[0].block_size == (5, 5) and model[0].p == 0.1
    assert type(model[1]) is dropkit.DropBlock3d and model[1].block_size == (3, 3, 3)
    # dropkit normalises by count / (eps + kept) as torchvision does: every eps is carried.
    assert type(model[2]) is dropkit.DropBlock2d and [m.eps for m in model] == [1e-6, 1e-6, 0.5]
    assert report.unreplaced == []
    unpatch(model)
    assert type(model[0]) is DropBlock2d and type(model[1]) is DropBlock3d and type(model[2]) is DropBlock2d


def test_torchvision_dropblock_is_replaced_and_keeps_its_rate_and_placement():
    try:
        ops = importlib.import_module("torchvision.ops")
    except Exception as exc:  # noqa: BLE001 - its C ops fail to register beside some torch builds
        pytest.skip(f"torchvision does not import here: {type(exc).__name__}: {exc}")
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ops.DropBlock2d(0.2, 3))
    patch(model, seed=1)
    assert type(model[1]) is dropkit.DropBlock2d and model[1].block_size == (3, 3) and model[1].p == 0.2
    # Same expected rate as torchvision's formula: about p of each map dropped.
    x = torch.ones(64, 8, 24, 24)
    dropped = (dropkit.DropBlock2d(0.2, 3, seed=2)(x) == 0).float().mean().item()
    reference = (ops.drop_block2d(x, 0.2, 3) == 0).float().mean().item()
    assert abs(dropped - reference) < 0.02
