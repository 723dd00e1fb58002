"""Channel, alpha, Gaussian, drop-path and sequence dropout against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

import dropkit
from dropkit import functional as DF
from family_helpers import scalar_keep, scalar_normal

ALPHA_PRIME = -1.0507009873554804934 * 1.6732632423543772848


# --- Dropout1d / 2d / 3d -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,shape",
    [
        (dropkit.Dropout1d, (3, 4, 5)),
        (dropkit.Dropout1d, (4, 5)),
        (dropkit.Dropout2d, (2, 3, 4, 5)),
        (dropkit.Dropout2d, (3, 4, 5)),
        (dropkit.Dropout3d, (2, 3, 2, 2, 2)),
        (dropkit.Dropout3d, (3, 2, 2, 2)),
    ],
)
def test_channel_dropout_mask_is_one_word_per_sample_channel(cls, shape):
    x = torch.randn(shape, dtype=torch.float64)
    m = cls(0.4, seed=99)
    y = m(x)
    spatial = {dropkit.Dropout1d: 1, dropkit.Dropout2d: 2, dropkit.Dropout3d: 3}[cls]
    mshape = shape[: len(shape) - spatial] + (1,) * spatial
    keep = scalar_keep(mshape, 0.4, 99, 0)
    torch.testing.assert_close(y, x * keep / 0.6, rtol=0, atol=0)
    assert int(m.offset) == math.ceil(math.prod(mshape) / 4)


def test_dropout2d_channels_last_matches_permuted_channels_first():
    x = torch.randn(2, 4, 5, 3)
    y = DF.dropout2d(x, 0.5, channels_last=True, seed=5)
    ref = DF.dropout2d(x.permute(0, 3, 1, 2), 0.5, seed=5).permute(0, 2, 3, 1)
    assert torch.equal(y, ref)
    unbatched = DF.dropout2d(x[0], 0.5, channels_last=True, seed=5)
    assert torch.equal(unbatched, DF.dropout2d(x[0].permute(2, 0, 1), 0.5, seed=5).permute(1, 2, 0))


@pytest.mark.parametrize(
    "fn,bad", [(DF.dropout2d, (2, 3)), (DF.dropout2d, (1, 2, 3, 4, 5)), (DF.dropout1d, (5,))]
)
def test_channel_dropout_refuses_other_ranks(fn, bad):
    with pytest.raises(ValueError, match="expects input of shape"):
        fn(torch.ones(bad), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"rank"):
        dropkit.Dropout2d(0.5, seed=0)(torch.ones(bad))


# --- AlphaDropout / FeatureAlphaDropout ----------------------------------------------------


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_alpha_dropout_keeps_mean_zero_and_variance_one(p):
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = DF.alpha_dropout(x, p, seed=3)
    # Sample size 4e5: the standard errors of mean and variance are below 0.003.
    assert abs(float(y.mean())) < 0.015
    assert abs(float(y.var()) - 1.0) < 0.02


def test_alpha_dropout_formula_with_scalar_mask():
    p = 0.3
    x = torch.randn(6, 7, dtype=torch.float64)
    # Torch's form of the same constants: a = ((1 - p)(1 + p alpha'^2))^-1/2, b = -a alpha' p.
    a = ((1 - p) * (1 + p * ALPHA_PRIME**2)) ** -0.5
    b = -a * ALPHA_PRIME * p
    keep = scalar_keep((6, 7), p, 4, 2)
    expected = torch.where(keep, a * x + b, torch.full_like(x, a * ALPHA_PRIME + b))
    torch.testing.assert_close(DF.alpha_dropout(x, p, seed=4, offset=2), expected)


def test_feature_alpha_dropout_drops_whole_channels():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    y = dropkit.FeatureAlphaDropout(0.5, seed=8)(x)
    keep = scalar_keep((3, 4, 1, 1), 0.5, 8, 0)
    a = (0.5 * (1 + 0.5 * ALPHA_PRIME**2)) ** -0.5
    b = -a * ALPHA_PRIME * 0.5
    torch.testing.assert_close(y, torch.where(keep, a * x + b, torch.full_like(x, a * ALPHA_PRIME + b)))
    with pytest.raises(ValueError, match=r"\(N, C, \*\)"):
        DF.feature_alpha_dropout(torch.ones(4), 0.5, seed=0)


# --- GaussianDropout / GaussianNoise --------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_gaussian_dropout_mean_and_variance(p):
    y = DF.gaussian_dropout(torch.ones(100_000, dtype=torch.float64), p, seed=11)
    var = p / (1 - p)
    se_var = var * math.sqrt(2 / 100_000)
    assert abs(float(y.mean()) - 1.0) < 5 * math.sqrt(var / 100_000)
    assert abs(float(y.var()) - var) < 6 * se_var


@pytest.mark.parametrize("n", [1, 7, 10])
def test_gaussian_noise_is_box_muller_of_stream_words(n):
    x = torch.randn(n, dtype=torch.float64)
    m = dropkit.GaussianNoise(0.3, seed=21)
    y = m(x)
    torch.testing.assert_close(y, x + 0.3 * scalar_normal(21, 0, n))
    # 2 * ceil(n / 2) words, i.e. ceil of that / 4 blocks.
    assert int(m.offset) == math.ceil(2 * math.ceil(n / 2) / 4)
    blocks = int(m.offset)
    torch.testing.assert_close(m(x), x + 0.3 * scalar_normal(21, blocks, n))


def test_gaussian_dropout_formula():
    x = torch.randn(3, 5, dtype=torch.float64)
    y = DF.gaussian_dropout(x, 0.2, seed=2, offset=9)
    torch.testing.assert_close(y, x * (1 + math.sqrt(0.2 / 0.8) * scalar_normal(2, 9, 15).view(3, 5)))


def test_gaussian_noise_validates_stddev():
    for bad in (-1.0, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="stddev"):
            dropkit.GaussianNoise(bad)


# --- DropPath / StochasticDepth --------------------------------------------------------------


def test_stochastic_depth_expected_depth_of_the_paper():
    # Huang et al. 2016: survival p_l = 1 - l / L (1 - p_L), p_L = 0.5, L = 54 -> (3L - 1) / 4.
    rates = dropkit.drop_path_rates(0.5, 54, rule="huang")
    assert math.isclose(sum(1 - r for r in rates), 40.25)
    assert math.isclose(sum(1 - r for r in rates), (3 * 54 - 1) / 4)
    assert math.isclose(rates[-1], 0.5) and math.isclose(rates[0], 0.5 / 54)


def test_drop_path_rate_rules():
    linear = dropkit.drop_path_rates(0.3, 4)
    assert linear == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert dropkit.drop_path_rates(0.4, 4, rule="torchvision") == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert dropkit.drop_path_rates(0.3, 1) == [0.0]
    for bad in [(0.3, 0), (1.2, 3), (0.3, 3, "cosine")]:
        with pytest.raises(ValueError):
            dropkit.drop_path_rates(*bad)


def test_drop_path_row_and_batch_modes():
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    keep = scalar_keep((6, 1, 1), 0.5, 13, 0)
    torch.testing.assert_close(dropkit.DropPath(0.5, seed=13)(x), x * keep * 2.0, rtol=0, atol=0)
    unscaled = dropkit.StochasticDepth(0.5, scale_by_keep=False, seed=13)(x)
    torch.testing.assert_close(unscaled, x * keep, rtol=0, atol=0)
    one = scalar_keep((1, 1, 1), 0.5, 13, 0)
    torch.testing.assert_close(DF.drop_path(x, 0.5, mode="batch", seed=13), x * one * 2.0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode"):
        dropkit.DropPath(0.1, mode="col")


# --- LockedDropout / EmbeddingDropout --------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_dropout_shares_the_mask_over_time(batch_first):
    x = torch.randn(5, 3, 4, dtype=torch.float64)  # (T, N, C) or (N, T, C)
    m = dropkit.LockedDropout(0.5, batch_first=batch_first, seed=17)
    y = m(x)
    mshape = (5, 1, 4) if batch_first else (1, 3, 4)
    torch.testing.assert_close(y, x * scalar_keep(mshape, 0.5, 17, 0) * 2.0, rtol=0, atol=0)
    assert int(m.offset) == math.ceil(math.prod(mshape) / 4)
    with pytest.raises(ValueError, match="LockedDropout"):
        m(torch.ones(2, 3, 4, 5))


def test_embedding_dropout_drops_whole_rows():
    emb = torch.nn.Embedding(10, 3, padding_idx=0)
    m = dropkit.EmbeddingDropout(emb, 0.4, seed=23)
    idx = torch.tensor([[0, 1, 2, 3], [3, 4, 5, 9]])
    keep = scalar_keep((10, 1), 0.4, 23, 0)
    expected = F.embedding(idx, emb.weight * keep / 0.6)
    torch.testing.assert_close(m(idx), expected)
    m.eval()
    torch.testing.assert_close(m(idx), emb(idx))
    with pytest.raises(TypeError, match="integer"):
        DF.embedding_dropout(torch.ones(2), emb.weight, 0.1, seed=0)
    with pytest.raises(ValueError, match="max_norm"):
        dropkit.EmbeddingDropout(torch.nn.Embedding(3, 2, max_norm=1.0))
