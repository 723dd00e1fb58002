"""Edge cases of the dropout family: saturated Concrete rates, bad rates at call, loss weights."""

import math

import pytest
import torch
from torch import nn

import dropkit
from dropkit import functional as DF
from dropkit.functional.concrete import concrete_regularizer_from_logit


def regularizer_in_float64(logit, sq, input_dim, wr, dr):
    """The Concrete regularizer from the logit in Python floats: 1 - p = 1 / (1 + e^l)."""
    p = 1.0 / (1.0 + math.exp(-logit))
    q = 1.0 / (1.0 + math.exp(logit))
    log_p = -math.log1p(math.exp(-logit))
    log_q = -math.log1p(math.exp(logit))
    return wr * sq / q + dr * input_dim * (p * log_p + q * log_q)


@pytest.mark.parametrize("p", [1 - 1e-9, 1e-50])
def test_concrete_regularizer_is_finite_for_rates_near_0_and_1(p):
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    m = dropkit.ConcreteDropout(lin, p=p, weight_regularizer=1e-2, dropout_regularizer=1e-1)
    m(torch.randn(4, 3))
    r = m.regularization()
    sq = float(sum(w.detach().double().pow(2).sum() for w in lin.parameters()))
    expected = regularizer_in_float64(float(m.p_logit.detach()), sq, 3, 1e-2, 1e-1)
    assert math.isclose(float(r.detach()), expected, rel_tol=1e-5)
    r.backward()
    assert torch.isfinite(m.p_logit.grad) and all(torch.isfinite(w.grad).all() for w in lin.parameters())
    assert math.isclose(m.p, p, rel_tol=1e-4)


def test_concrete_regularizer_from_logit_matches_the_formula_in_p():
    for logit in (-3.0, 0.0, 0.7, 5.0):
        p = 1.0 / (1.0 + math.exp(-logit))
        expected = 2e-2 * 1.5 / (1 - p) + 3e-1 * 7 * (p * math.log(p) + (1 - p) * math.log(1 - p))
        got = concrete_regularizer_from_logit(torch.tensor(logit, dtype=torch.float64), 1.5, 7, 2e-2, 3e-1)
        assert math.isclose(float(got), expected, rel_tol=1e-12)
        public = DF.concrete_regularizer(torch.tensor(p, dtype=torch.float64), 1.5, 7, 2e-2, 3e-1)
        assert math.isclose(float(public), expected, rel_tol=1e-9)


def test_concrete_dropout_refuses_a_boolean_temperature():
    with pytest.raises(ValueError, match="temperature"):
        DF.concrete_dropout(torch.ones(2, 2), torch.tensor(0.0), True)


@pytest.mark.parametrize("bad", ["0.5", None, float("nan"), 1.5])
def test_weight_drop_names_a_bad_rate_when_set(bad):
    m = dropkit.WeightDrop(nn.LSTM(3, 4), 0.5)
    with pytest.raises(ValueError, match="p must be"):
        m.p = bad


def test_rdrop_loss_refuses_an_infinite_alpha():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="alpha"):
        dropkit.rdrop_loss(logits, logits, torch.tensor([0, 1]), float("inf"))
