"""Rules every dropout-family layer follows: seeding, state_dict, eval identity, validation, p = 0 / 1."""

import pytest
import torch
from torch import nn

import dropkit
from dropkit.ops import use_backend

# (factory taking p and stream kwargs, input shape). GaussianNoise's rate is its stddev.
LAYERS = {
    "Dropout1d": (lambda p, **k: dropkit.Dropout1d(p, **k), (2, 3, 5)),
    "Dropout2d": (lambda p, **k: dropkit.Dropout2d(p, **k), (2, 3, 4, 4)),
    "Dropout3d": (lambda p, **k: dropkit.Dropout3d(p, **k), (2, 3, 2, 2, 2)),
    "AlphaDropout": (lambda p, **k: dropkit.AlphaDropout(p, **k), (4, 6)),
    "FeatureAlphaDropout": (lambda p, **k: dropkit.FeatureAlphaDropout(p, **k), (2, 3, 4)),
    "GaussianDropout": (lambda p, **k: dropkit.GaussianDropout(p, **k), (4, 5)),
    "GaussianNoise": (lambda p, **k: dropkit.GaussianNoise(p, **k), (4, 5)),
    "DropPath": (lambda p, **k: dropkit.DropPath(p, **k), (6, 3)),
    "StochasticDepth": (lambda p, **k: dropkit.StochasticDepth(p, "batch", **k), (6, 3)),
    "DropBlock2d": (lambda p, **k: dropkit.DropBlock2d(p, 3, **k), (2, 2, 6, 6)),
    "DropBlock3d": (lambda p, **k: dropkit.DropBlock3d(p, 2, **k), (1, 2, 4, 4, 4)),
    "LockedDropout": (lambda p, **k: dropkit.LockedDropout(p, **k), (5, 2, 3)),
    "DropConnect": (lambda p, **k: dropkit.DropConnect(nn.Linear(4, 3), p, **k), (2, 4)),
}
NAMES = sorted(LAYERS)


def make(name, p, **kwargs):
    factory, shape = LAYERS[name]
    torch.manual_seed(123)  # the same wrapped weights for every instance
    return factory(p, **kwargs), shape


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_identity_and_p_zero_consumes_nothing(name):
    m, shape = make(name, 0.5, seed=3)
    x = torch.randn(shape)
    m.eval()
    expected = m.module(x) if name == "DropConnect" else x
    assert torch.equal(m(x), expected)
    m.train()
    if name == "GaussianNoise":
        m.stddev = 0.0
    else:
        m.p = 0.0
    assert torch.equal(m(x), expected)
    assert int(m.offset) == 0


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_the_stream(name):
    a, shape = make(name, 0.3, seed=2**63 + 5)
    x = torch.randn(shape)
    a(x)
    b, _ = make(name, 0.3, seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    assert torch.equal(a(x), b(x))
    assert int(a.offset) == int(b.offset) > 0


@pytest.mark.parametrize("name", NAMES)
def test_default_seeding_follows_manual_seed_and_generator(name):
    m, shape = make(name, 0.5)
    x = torch.randn(shape)
    torch.manual_seed(7)
    first = m(x)
    torch.manual_seed(7)
    assert torch.equal(m(x), first)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    m1, _ = make(name, 0.5, generator=g1)
    m2, _ = make(name, 0.5, generator=g2)
    assert torch.equal(m1(x), m2(x))
    assert not m.state_dict().keys() & {"seed", "offset"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_p_zero_and_one_give_finite_outputs_and_gradients(name, p):
    if name == "GaussianNoise":
        p = 0.0 if p == 0.0 else 1e3
    m, shape = make(name, p, seed=0)
    x = torch.randn(shape, requires_grad=True)
    out = m(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    for param in m.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all()
    if p == 1.0 and name not in ("StochasticDepth", "DropConnect"):
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "GaussianNoise"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None])
def test_bad_rates_fail_at_construction_and_when_set(name, bad):
    with pytest.raises(ValueError, match="p must be"):
        make(name, bad)
    m, shape = make(name, 0.5)
    with pytest.raises(ValueError, match="p must be"):
        m.p = bad  # checked when set, so a forward never checks it again
    assert m.p == 0.5 or name == "ConcreteDropout"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "DropConnect"])
def test_integer_inputs_are_type_errors(name):
    m, shape = make(name, 0.5, seed=0)
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(shape, dtype=torch.int64))


def test_seed_and_generator_are_exclusive_and_repr_names_the_rate():
    with pytest.raises(ValueError, match="either seed or generator"):
        dropkit.Dropout2d(0.5, seed=1, generator=torch.Generator())
    assert "p=0.25" in repr(dropkit.DropBlock2d(0.25, 5, seed=1))
    assert "seed=1" in repr(dropkit.WeightDrop(nn.GRU(2, 2), 0.1, seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_reference_and_default_backends_agree(name):
    outputs = []
    for backend in ("reference", "auto"):
        m, shape = make(name, 0.4, seed=31)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with use_backend(backend):
            outputs.append(m(x))
    assert torch.equal(outputs[0], outputs[1])
