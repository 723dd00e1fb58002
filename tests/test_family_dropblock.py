"""DropBlock against the paper's gamma and a block-by-block reconstruction of its mask."""

import math

import pytest
import torch

import dropkit
from dropkit import functional as DF
from family_helpers import scalar_words


def naive_block_mask(shape, p, block, seed, offset=0, shared=False):
    """Loop over seeds in the valid region; each drops [i, i + b) per dimension."""
    n, c, *spatial = shape
    block = [min(b, f) for b, f in zip(block, spatial, strict=True)]
    gamma = p
    for b, f in zip(block, spatial, strict=True):
        gamma *= f / (b * (f - b + 1))
    t = round(gamma * 2**32)
    valid = [f - b + 1 for b, f in zip(block, spatial, strict=True)]
    cs = 1 if shared else c
    words = scalar_words(seed, offset, n * cs * math.prod(valid))
    mask = torch.ones(n, cs, *spatial, dtype=torch.float64)
    k = 0
    for i in range(n):
        for j in range(cs):
            for pos in torch.cartesian_prod(*[torch.arange(v) for v in valid]).view(-1, len(valid)).tolist():
                if words[k] < t:
                    region = tuple(slice(q, q + b) for q, b in zip(pos, block, strict=True))
                    mask[(i, j, *region)] = 0.0
                k += 1
    return mask


def test_gamma_of_the_paper():
    # keep_prob 0.9, block 7, feature map 14: 0.1 / 49 * 196 / 64 = 0.00625.
    assert math.isclose(DF.dropblock_gamma(0.1, (7, 7), (14, 14)), 0.00625)
    assert math.isclose(DF.dropblock_gamma(0.2, (3, 5), (10, 12)), 0.2 / 15 * 120 / (8 * 8))
    assert math.isclose(DF.dropblock_gamma(0.3, (2, 2, 2), (4, 4, 4)), 0.3 / 8 * 64 / 27)


@pytest.mark.parametrize("block", [3, 4])
def test_single_seed_drops_exactly_one_block(block):
    # Find a stream position whose seed grid (one map, 7 x 7 valid positions) has one seed.
    p, feat = 0.15, 9
    valid = feat - block + 1
    gamma = DF.dropblock_gamma(p, (block, block), (feat, feat))
    t = round(gamma * 2**32)
    for offset in range(200):
        words = scalar_words(5, offset * math.ceil(valid * valid / 4), valid * valid)
        seeds = [k for k, w in enumerate(words) if w < t]
        if len(seeds) == 1:
            break
    else:
        pytest.fail("no single-seed stream position found")
    off = offset * math.ceil(valid * valid / 4)
    x = torch.ones(1, 1, feat, feat, dtype=torch.float64)
    y = DF.drop_block2d(x, p, block, seed=5, offset=off)
    i, j = divmod(seeds[0], valid)
    dropped = (y == 0).squeeze()
    assert int(dropped.sum()) == block * block
    assert bool(dropped[i : i + block, j : j + block].all())
    # Renormalized by count / count_kept.
    torch.testing.assert_close(
        y[y != 0], torch.full((feat * feat - block * block,), 81 / (81 - block * block), dtype=torch.float64)
    )


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(
    "block,shape", [((3, 3), (2, 3, 8, 8)), ((4, 2), (2, 2, 7, 6)), ((2, 2, 2), (1, 2, 4, 5, 4))]
)
def test_output_matches_naive_reconstruction(block, shape, shared):
    x = torch.randn(shape, dtype=torch.float64)
    p = 0.4
    fn = DF.drop_block2d if len(block) == 2 else DF.drop_block3d
    y = fn(x, p, block, shared_channels=shared, seed=31, offset=4)
    mask = naive_block_mask(shape, p, block, 31, 4, shared).expand(shape)
    scale = mask.numel() / mask.sum() if not shared else mask[:, :1].numel() / mask[:, :1].sum()
    torch.testing.assert_close(y, x * mask * scale)


def test_block_larger_than_map_is_clipped():
    x = torch.ones(4, 6, 5, 5)
    y = DF.drop_block2d(x, 0.5, 7, seed=2)
    # Clipped to 5 x 5: gamma = p, and each channel is either all dropped or all kept.
    per_channel = (y == 0).flatten(2).float().mean(-1)
    assert set(per_channel.flatten().tolist()) <= {0.0, 1.0}
    # Each channel is dropped with probability gamma = p: over 200 seeds x 24 channels the share
    # dropped is 0.5 within 5 binomial standard deviations (0.036); gamma = p / 49 would give 0.01.
    dropped = torch.stack([(DF.drop_block2d(x, 0.5, 7, seed=s) == 0).flatten(2).all(-1) for s in range(200)])
    assert abs(dropped.double().mean().item() - 0.5) < 5 * (0.25 / dropped.numel()) ** 0.5


def test_all_dropped_gives_zeros_and_finite_gradients():
    x = torch.randn(1, 1, 3, 3, requires_grad=True)
    # One valid position with gamma = p = 0.999999 (block clipped to the map): dropped.
    y = DF.drop_block2d(x, 0.999999, 5, seed=0)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_module_consumes_seed_grid_words_and_validates():
    m = dropkit.DropBlock2d(0.1, 3, seed=1)
    m(torch.ones(2, 4, 10, 10))
    assert int(m.offset) == math.ceil(2 * 4 * 8 * 8 / 4)
    m3 = dropkit.DropBlock3d(0.1, (1, 2, 3), shared_channels=True, seed=1)
    m3(torch.ones(2, 4, 3, 4, 5))
    assert int(m3.offset) == math.ceil(2 * 1 * 3 * 3 * 3 / 4)
    for bad in (0, -1, 2.5, (3, 0), (3, 3, 3)):
        with pytest.raises(ValueError, match="block_size"):
            dropkit.DropBlock2d(0.1, bad)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        m(torch.ones(10, 10))
