"""timm's and torchvision's spellings of DropPath, drop_path, StochasticDepth and DropBlock,
checked against the formulas written out from the stream words."""

import pytest
import torch

import dropkit
from dropkit import rng
from dropkit.functional import drop_path
from dropkit.functional.dropblock import dropblock_gamma, dropblock_seed_shape


def _rows_kept(p, seed, n, offset=0):
    return rng.philox_words(seed, offset, n) >= rng.keep_threshold(p)


def test_drop_path_timm_positional_order():
    x = torch.randn(16, 3, dtype=torch.float64)
    keep = _rows_kept(0.5, 4, 16).to(x.dtype).view(16, 1)
    # timm: drop_path(x, drop_prob, training, scale_by_keep)
    torch.testing.assert_close(drop_path(x, 0.5, True, True, seed=4), x * keep / 0.5, rtol=0, atol=0)
    torch.testing.assert_close(drop_path(x, 0.5, True, False, seed=4), x * keep, rtol=0, atol=0)
    assert drop_path(x, 0.5, False, True, seed=4) is x
    torch.testing.assert_close(drop_path(x, drop_prob=0.5, seed=4), x * keep / 0.5, rtol=0, atol=0)
    with pytest.raises(TypeError, match="drop_prob=0.2"):
        drop_path(x, 0.5, drop_prob=0.2)


def test_drop_path_module_timm_spelling_and_drop_prob_attribute():
    x = torch.randn(16, 2, 2, dtype=torch.float64)
    keep = _rows_kept(0.3, 8, 16).to(x.dtype).view(16, 1, 1)
    a = dropkit.DropPath(drop_prob=0.3, scale_by_keep=False, seed=8)
    b = dropkit.DropPath(0.3, False, seed=8)  # timm's positional order
    for m in (a, b):
        assert (m.p, m.drop_prob, m.scale_by_keep, m.mode) == (0.3, 0.3, False, "row")
        torch.testing.assert_close(m(x), x * keep, rtol=0, atol=0)
    a.drop_prob = 0.1  # training scripts that schedule timm's attribute reach dropkit's rate
    assert a.p == 0.1
    with pytest.raises(ValueError, match="1.5"):
        a.drop_prob = 1.5
    with pytest.raises(TypeError, match="StochasticDepth"):
        dropkit.DropPath(0.1, "batch")  # torchvision's order is StochasticDepth's
    with pytest.raises(TypeError, match="drop_prob=0.2"):
        dropkit.DropPath(0.1, drop_prob=0.2)


def test_stochastic_depth_torchvision_order():
    x = torch.randn(8, 3, dtype=torch.float64)
    m = dropkit.StochasticDepth(0.4, "batch", seed=2)
    kept = bool(_rows_kept(0.4, 2, 1)[0])
    torch.testing.assert_close(m(x), x / 0.6 if kept else torch.zeros_like(x), rtol=0, atol=0)
    assert int(m.offset) == 1  # one word for the batch
    row = dropkit.StochasticDepth(0.4, "row", seed=2)
    keep = _rows_kept(0.4, 2, 8).to(x.dtype).view(8, 1)
    torch.testing.assert_close(row(x), x * keep / 0.6, rtol=0, atol=0)


def _block_keep(p, block, shape, seed, shared=False, gamma_scale=1.0):
    """The block mask written out: seeds below round(gamma 2**32) over the valid region, each
    dropping the block to its lower right."""
    n, c, h, w = shape
    gamma = min(gamma_scale * dropblock_gamma(p, (block, block), (h, w)), 1.0)
    grid = dropblock_seed_shape(shape, (block, block), shared)
    count = grid[0] * grid[1] * grid[2] * grid[3]
    seeds = (rng.philox_words(seed, 0, count) < rng.keep_threshold(gamma)).view(grid)
    dropped = torch.zeros(n, grid[1], h, w, dtype=torch.bool)
    for i, j in zip(*torch.nonzero(seeds.any(0).any(0), as_tuple=True), strict=True):
        dropped[:, :, i:i + block, j:j + block] |= seeds[:, :, i, j].view(n, grid[1], 1, 1)
    return ~dropped.expand(n, c, h, w)


@pytest.mark.parametrize("shared", [False, True])
def test_dropblock_timm_keywords_against_the_formula(shared):
    shape = (2, 3, 10, 10)
    x = torch.rand(shape, dtype=torch.float64) + 0.5
    m = dropkit.DropBlock2d(drop_prob=0.1, block_size=3, gamma_scale=2.0, couple_channels=shared, fast=True,
                            seed=6)
    assert (m.p, m.drop_prob, m.gamma_scale, m.shared_channels) == (0.1, 0.1, 2.0, shared)
    keep = _block_keep(0.1, 3, shape, 6, shared, gamma_scale=2.0)
    expected = x * keep * (keep.numel() / keep.sum())
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=0)
    # gamma_scale multiplies the seed rate, which is linear in p.
    twin = dropkit.DropBlock2d(0.2, 3, shared_channels=shared, seed=6)
    torch.testing.assert_close(twin(x), expected, rtol=1e-12, atol=0)


def test_dropblock_torchvision_signature_with_eps():
    shape = (2, 3, 9, 9)
    x = torch.rand(shape, dtype=torch.float64) + 0.5
    m = dropkit.DropBlock2d(0.2, 3, False, 0.25, seed=1)  # torchvision: (p, block_size, inplace, eps)
    keep = _block_keep(0.2, 3, shape, 1)
    expected = x * keep * (keep.numel() / (0.25 + keep.sum().item()))
    # The kernel's count / kept factor is a float32 (as in the test above); eps rescales it.
    torch.testing.assert_close(m(x), expected, rtol=1e-7, atol=0)
    without_eps = dropkit.DropBlock2d(0.2, 3, seed=1)(x)  # same mask, count / kept
    torch.testing.assert_close(without_eps, x * keep * (keep.numel() / keep.sum().item()), rtol=1e-7, atol=0)
    assert not torch.allclose(without_eps, expected, rtol=1e-4, atol=0)
    cube = dropkit.DropBlock3d(0.2, 2, False, 1e-6, seed=1)
    assert cube.eps == 1e-6 and cube(torch.ones(1, 2, 4, 4, 4)).shape == (1, 2, 4, 4, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"with_noise": True}, "with_noise=True"),
        ({"scale_by_keep": False}, "scale_by_keep=False"),
        ({"batchwise": True}, "batchwise=True"),
        ({"shared_channels": True, "couple_channels": False}, "couple_channels=False"),
        ({"drop_prob": 0.2, "p": 0.3}, "drop_prob=0.2"),
        ({"fast": "yes"}, "'yes'"),
    ],
)
def test_dropblock_arguments_without_a_dropkit_meaning_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        dropkit.DropBlock2d(**kwargs)


def test_dropblock_timm_positional_gamma_scale_is_named():
    with pytest.raises(TypeError, match="gamma_scale="):
        dropkit.DropBlock2d(0.1, 7, 1.0)  # timm's third positional argument is gamma_scale
    with pytest.raises(ValueError, match="eps"):
        dropkit.DropBlock2d(0.1, 7, False, -1.0)
    with pytest.raises(ValueError, match="gamma_scale"):
        dropkit.DropBlock2d(0.1, 7, gamma_scale=float("nan"))
