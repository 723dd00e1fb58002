"""Gal's weight decay against torch's: gal_tau's two conventions, its inverse, and the one-output
shape of gal_log_likelihood."""

from __future__ import annotations

import math

import pytest
import torch

from dropkit.uncertainty import gal_log_likelihood, gal_tau, weight_decay_for_tau


def test_torch_weight_decay_is_twice_gals_lambda():
    # Independent of dropkit: one SGD step with weight_decay=wd on a zero loss moves W by
    # -lr * wd * W, the same step as the gradient of lambda * sum(W^2) with lambda = wd / 2.
    wd, lr = 0.3, 0.1
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 4.0]))
    optimizer = torch.optim.SGD([w], lr=lr, weight_decay=wd)
    (w * 0).sum().backward()
    optimizer.step()
    v = torch.tensor([1.0, -2.0, 4.0], requires_grad=True)
    ((wd / 2) * v.pow(2).sum()).backward()
    torch.testing.assert_close(w.detach(), (v - lr * v.grad).detach())
    # So torch's wd and Gal's lambda = wd / 2 describe the same training, and the same tau.
    assert gal_tau(0.5, 0.2, 1000, torch_weight_decay=wd) == pytest.approx(gal_tau(0.5, 0.2, 1000, wd / 2))
    assert gal_tau(0.5, 0.2, 1000, torch_weight_decay=wd) == pytest.approx(0.25 * 0.8 / (1000 * wd))


@pytest.mark.parametrize("convention, factor", [("torch", 1.0), ("gal", 0.5)])
def test_weight_decay_for_tau_inverts_gal_tau(convention, factor):
    for tau in (1e-3, 0.25, 40.0):
        wd = weight_decay_for_tau(tau, 0.1, 0.5, 200, convention=convention)
        assert wd == pytest.approx(factor * 0.01 * 0.5 / (200 * tau))
        key = "torch_weight_decay" if convention == "torch" else "weight_decay"
        assert gal_tau(0.1, 0.5, 200, **{key: wd}) == pytest.approx(tau)


def test_gal_tau_refuses_ambiguous_or_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of weight_decay"):
        gal_tau(0.1, 0.5, 10, 1e-4, torch_weight_decay=2e-4)
    with pytest.raises(ValueError, match="exactly one of weight_decay"):
        gal_tau(0.1, 0.5, 10)
    with pytest.raises(ValueError, match="torch_weight_decay must be a finite number > 0, got -1"):
        gal_tau(0.1, 0.5, 10, torch_weight_decay=-1)
    with pytest.raises(ValueError, match="convention must be 'torch' or 'gal', got 'keras'"):
        weight_decay_for_tau(1.0, 0.1, 0.5, 10, convention="keras")
    with pytest.raises(ValueError, match="tau must be a finite number > 0, got 0"):
        weight_decay_for_tau(0, 0.1, 0.5, 10)


def test_log_likelihood_takes_y_of_shape_n_for_one_output():
    outputs = torch.tensor([[[0.0], [1.0]], [[2.0], [1.0]]])  # T=2, N=2, one output
    y = torch.tensor([1.0, 1.0])
    tau = 2.0
    # By hand: point 0 has squared errors 1 and 1, point 1 has 0 and 0.
    const = -0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau)
    expected = ((-0.5 * tau * 1 + const) + (0 + const)) / 2
    assert gal_log_likelihood(outputs, y, tau) == pytest.approx(expected)
    assert gal_log_likelihood(outputs, y[:, None], tau) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\(2, 2, 1\) and \(3,\)"):
        gal_log_likelihood(outputs, torch.zeros(3), tau)
