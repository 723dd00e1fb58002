"""DropConnect, WeightDrop, ConcreteDropout and R-Drop against hand computations."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from family_helpers import scalar_keep, scalar_uniform

# --- DropConnect ------------------------------------------------------------------------------


def test_drop_connect_linear_uses_masked_weight_and_leaves_parameters():
    lin = nn.Linear(5, 3).double()
    w0 = lin.weight.detach().clone()
    m = dropkit.DropConnect(lin, 0.25, seed=41)
    x = torch.randn(4, 5, dtype=torch.float64)
    y = m(x)
    keep = scalar_keep((3, 5), 0.25, 41, 0)
    torch.testing.assert_close(y, F.linear(x, w0 * keep / 0.75, lin.bias))
    assert torch.equal(lin.weight, w0)
    assert int(m.offset) == math.ceil(15 / 4)
    assert {"module.weight", "module.bias", "seed", "offset"} == set(m.state_dict())
    m.eval()
    torch.testing.assert_close(m(x), lin(x))


def test_drop_connect_conv2d_weight_and_bias_layout():
    conv = nn.Conv2d(2, 3, 3).double()
    m = dropkit.DropConnect(conv, 0.5, names=("weight", "bias"), seed=6)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    y = m(x)
    kw = scalar_keep((3, 2, 3, 3), 0.5, 6, 0)
    kb = scalar_keep((3,), 0.5, 6, math.ceil(54 / 4))  # the bias starts at the next block
    torch.testing.assert_close(y, F.conv2d(x, conv.weight * kw * 2, conv.bias * kb * 2))
    with pytest.raises(TypeError, match="WeightDrop"):
        dropkit.DropConnect(nn.LSTM(2, 2))
    with pytest.raises(ValueError, match="no parameter"):
        dropkit.DropConnect(nn.Linear(2, 2), names=("kernel",))


# --- WeightDrop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rnn_cls", [nn.LSTM, nn.GRU])
def test_weight_drop_equals_rnn_with_dropped_hidden_weights(rnn_cls):
    torch.manual_seed(0)
    rnn = rnn_cls(3, 4, num_layers=2).double()
    raw = {n: p.detach().clone() for n, p in rnn.named_parameters()}
    m = dropkit.WeightDrop(rnn, 0.5, seed=77)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out, _ = m(x)
    gates = 4 if rnn_cls is nn.LSTM else 3
    manual = copy.deepcopy(rnn)
    n = gates * 4 * 4
    with torch.no_grad():
        manual.weight_hh_l0.mul_(scalar_keep((gates * 4, 4), 0.5, 77, 0) * 2)
        manual.weight_hh_l1.mul_(scalar_keep((gates * 4, 4), 0.5, 77, math.ceil(n / 4)) * 2)
    torch.testing.assert_close(out, manual(x)[0])
    # The raw weights are untouched and still registered; gradients reach them.
    for name, value in raw.items():
        assert torch.equal(getattr(rnn, name), value)
    out.sum().backward()
    assert rnn.weight_hh_l0.grad is not None and torch.isfinite(rnn.weight_hh_l0.grad).all()
    # Evaluation drops nothing, and neither does the bare module after a training call.
    m.eval()
    reference = rnn_cls(3, 4, num_layers=2).double()
    reference.load_state_dict(raw)
    torch.testing.assert_close(m(x)[0], reference(x)[0])
    torch.testing.assert_close(rnn(x)[0], reference(x)[0])
    assert "module.weight_hh_l0" in m.state_dict()


def test_weight_drop_refuses_non_recurrent():
    with pytest.raises(TypeError, match="LSTM"):
        dropkit.WeightDrop(nn.Linear(2, 2))


# --- ConcreteDropout ----------------------------------------------------------------------------


def test_concrete_dropout_relaxed_mask_from_stream_uniforms():
    p = 0.2
    x = torch.randn(3, 4, dtype=torch.float64)
    m = dropkit.ConcreteDropout(None, p=p, seed=12)
    y = m(x)
    u = scalar_uniform(12, 0, 12).view(3, 4)
    z = torch.sigmoid((math.log(p) - math.log(1 - p) + torch.log(u) - torch.log(1 - u)) / 0.1)
    torch.testing.assert_close(y, x * (1 - z) / (1 - p))
    assert int(m.offset) == 3


def test_concrete_spatial_uses_one_value_per_channel_and_temperature_two_thirds():
    m = dropkit.ConcreteDropout(None, p=0.3, spatial=True, seed=4)
    assert math.isclose(m.temperature, 2 / 3)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = m(x)
    u = scalar_uniform(4, 0, 6).view(2, 3, 1, 1)
    z = torch.sigmoid((math.log(0.3 / 0.7) + torch.log(u) - torch.log(1 - u)) / (2 / 3))
    torch.testing.assert_close(y, x * (1 - z) / 0.7)
    assert m.input_dim == 3


def test_concrete_regularizer_formula_and_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(6, 2)
    m = dropkit.ConcreteDropout(lin, p=0.25, weight_regularizer=1e-2, dropout_regularizer=1e-1)
    model = nn.Sequential(m, nn.ReLU(), dropkit.ConcreteDropout(nn.Linear(2, 1), p=0.5))
    model(torch.randn(5, 6))
    p = 0.25
    sq = float(lin.weight.detach().pow(2).sum() + lin.bias.detach().pow(2).sum())
    expected = 1e-2 * sq / (1 - p) + 1e-1 * 6 * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert math.isclose(float(m.regularization().detach()), expected, rel_tol=1e-5)
    total = dropkit.concrete_regularization(model)
    second = float(model[2].regularization().detach())
    assert math.isclose(float(total.detach()), expected + second, rel_tol=1e-5)
    total.backward()
    # d/dp of the entropy term vanishes at p = 1/2 only; here p = 0.25 so the gradient is nonzero.
    assert m.p_logit.grad is not None and float(m.p_logit.grad) != 0.0


def test_concrete_p_property_and_validation():
    m = dropkit.ConcreteDropout(None, p=0.1)
    assert math.isclose(m.p, 0.1, rel_tol=1e-6)
    m.p = 0.4
    assert math.isclose(m.p, 0.4, rel_tol=1e-6)
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="open interval|probability"):
            dropkit.ConcreteDropout(None, p=bad)
    with pytest.raises(RuntimeError, match="forward"):
        dropkit.ConcreteDropout(nn.Linear(2, 2)).regularization()
    x = torch.randn(2, 3)
    m.eval()
    assert torch.equal(m(x), x)


# --- R-Drop --------------------------------------------------------------------------------------


def test_rdrop_loss_against_hand_computation():
    l1 = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    l2 = torch.tensor([[0.5, 2.5, 0.0], [1.0, -1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ce, kl = 0.0, 0.0
    for a, b, t in zip(l1.tolist(), l2.tolist(), y.tolist(), strict=True):
        pa, pb = softmax(a), softmax(b)
        ce += (-math.log(pa[t]) - math.log(pb[t])) / 2
        kl12 = sum(u * math.log(u / v) for u, v in zip(pa, pb, strict=True))
        kl21 = sum(v * math.log(v / u) for u, v in zip(pa, pb, strict=True))
        kl += (kl12 + kl21) / 2
    expected = ce / 2 + 0.7 * kl / 2
    assert math.isclose(float(dropkit.rdrop_loss(l1, l2, y, 0.7)), expected, rel_tol=1e-12)
    assert math.isclose(
        float(dropkit.rdrop_loss(l1, l1, y, 5.0)), float(F.cross_entropy(l1, y)), rel_tol=1e-12
    )
    with pytest.raises(ValueError, match="alpha"):
        dropkit.rdrop_loss(l1, l2, y, -1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        dropkit.rdrop_loss(l1, l2[:, :2], y, 1.0)
