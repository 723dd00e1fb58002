"""timm's and torchvision's spellings against the real packages: every argument of their
signatures is accepted by dropkit's class of the same name (or refused with a TypeError, as
docs/family.md lists), and outputs agree in distribution where the random draws cannot be
matched (theirs come from torch's generator, dropkit's from its stream)."""

import inspect

import pytest
import torch
from interop_helpers import real

import dropkit
from dropkit.functional import drop_path

N = 20000


def _defaults(cls):
    return {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}


def _close(a, b, n=N):
    """Two frequencies agree to within 5 standard errors of a binomial proportion."""
    q = (a + b) / 2
    assert abs(a - b) < 5 * (2 * q * (1 - q) / n) ** 0.5 + 1e-12, (a, b)


def test_timm_drop_path_signature_and_distribution():
    timm = real("timm")
    ours = dropkit.DropPath(**_defaults(timm.layers.DropPath))
    assert (ours.p, ours.scale_by_keep) == (0.0, True)
    x = torch.ones(N, 2)
    for scale in (True, False):
        theirs = timm.layers.DropPath(0.3, scale).train()
        mine = dropkit.DropPath(0.3, scale, seed=1)
        assert (mine.drop_prob, mine.scale_by_keep) == (theirs.drop_prob, theirs.scale_by_keep)
        y_t, y_m = theirs(x), mine(x)
        kept = 1 / 0.7 if scale else 1.0
        assert y_t.unique().tolist() == y_m.unique().tolist() == [0.0, pytest.approx(kept)]
        _close(float((y_t[:, 0] > 0).double().mean()), float((y_m[:, 0] > 0).double().mean()))
        assert torch.equal(y_m[:, 0], y_m[:, 1])  # one draw per sample, as timm
    # timm's functional, positionally.
    f_t = timm.layers.drop_path(x, 0.3, True, True)
    f_m = drop_path(x, 0.3, True, True, seed=2)
    _close(float((f_t > 0).double().mean()), float((f_m > 0).double().mean()))
    assert timm.layers.drop_path(x, 0.3, False) is x and drop_path(x, 0.3, False) is x


def test_timm_dropblock_signature_and_distribution():
    timm = real("timm")
    defaults = _defaults(timm.layers.DropBlock2d)
    ours = dropkit.DropBlock2d(**defaults)  # every timm argument, at timm's defaults
    assert (ours.p, ours.block_size, ours.gamma_scale, ours.shared_channels) == (0.1, (7, 7), 1.0, True)
    assert set(defaults) >= {"drop_prob", "block_size", "gamma_scale", "with_noise", "inplace",
                             "couple_channels", "scale_by_keep"}
    for name, value in (("with_noise", True), ("scale_by_keep", False)):
        with pytest.raises(TypeError, match=name):
            dropkit.DropBlock2d(**{**defaults, name: value})
    # With 1 x 1 blocks timm's and dropkit's placements coincide: each position is dropped with
    # probability gamma_scale * drop_prob, one mask for all channels with couple_channels, and
    # the kept values are scaled by numel / kept.
    x = torch.ones(50, 3, 20, 20)
    for couple in (True, False):
        kwargs = {"drop_prob": 0.1, "block_size": 1, "gamma_scale": 1.5, "couple_channels": couple}
        y_t = timm.layers.DropBlock2d(**kwargs).train()(x)
        y_m = dropkit.DropBlock2d(**kwargs, seed=3)(x)
        n = x.numel() // (3 if couple else 1)
        _close(float((y_t == 0).double().mean()), float((y_m == 0).double().mean()), n)
        assert abs(float((y_m == 0).double().mean()) - 0.15) < 5 * (0.15 * 0.85 / n) ** 0.5
        for y in (y_t, y_m):
            assert torch.equal(y[:, 0] == 0, y[:, 1] == 0) == couple
            kept = (y != 0).sum().item()
            assert y.max().item() == pytest.approx(x.numel() / kept, rel=1e-6)


def test_torchvision_stochastic_depth_signature_and_distribution():
    ops = real("torchvision.ops")
    theirs = ops.StochasticDepth(0.25, "row").train()
    mine = dropkit.StochasticDepth(0.25, "row", seed=4)  # torchvision's positional order
    assert (mine.p, mine.mode) == (theirs.p, theirs.mode)
    x = torch.ones(N, 3)
    _close(float((theirs(x)[:, 0] > 0).double().mean()), float((mine(x)[:, 0] > 0).double().mean()))
    batch_t, batch_m = ops.StochasticDepth(0.25, "batch"), dropkit.StochasticDepth(0.25, "batch", seed=4)
    calls = 4000
    t = sum(bool(batch_t(x[:4]).any()) for _ in range(calls)) / calls
    m = sum(bool(batch_m(x[:4]).any()) for _ in range(calls)) / calls
    _close(t, m, calls)


def test_torchvision_dropblock_signature_and_normalisation():
    ops = real("torchvision.ops")
    for theirs_cls, ours_cls, shape in ((ops.DropBlock2d, dropkit.DropBlock2d, (500, 4, 12, 12)),
                                        (ops.DropBlock3d, dropkit.DropBlock3d, (1000, 2, 6, 6, 6))):
        args = (0.2, 3, False, 1e-6)  # torchvision's (p, block_size, inplace, eps), positionally
        theirs, mine = theirs_cls(*args).train(), ours_cls(*args, seed=5)
        assert (mine.p, mine.block_size[0], mine.inplace, mine.eps) == (theirs.p, theirs.block_size,
                                                                          theirs.inplace, theirs.eps)
        x = torch.ones(shape, dtype=torch.float64)
        y_t, y_m = theirs(x), mine(x)
        # The same seed rate and placement: the same dropped fraction per map in expectation
        # (maps are independent; 5 standard errors of the difference of the two means).
        per_map = [(y == 0).flatten(2).double().mean(2).flatten() for y in (y_t, y_m)]
        error = sum(f.var() / f.numel() for f in per_map) ** 0.5
        assert abs(per_map[0].mean() - per_map[1].mean()) < 5 * error
        # The same normalisation, numel / (eps + kept), each checked on its own mask.
        for y in (y_t, y_m):
            kept = (y != 0).sum().item()
            assert y.max().item() == pytest.approx(x.numel() / (1e-6 + kept), rel=1e-6)
