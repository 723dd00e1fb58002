"""Independent reconstructions for the dropout-family tests: scalar Philox, word by word."""

import math

import torch

from dropkit import rng


def assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a`` and ``b`` hold the same bits (NaNs at the same places), dtype and shape."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.is_floating_point():
        nan = a.isnan()
        assert torch.equal(nan, b.isnan())
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(view)[~nan], b.contiguous().view(view)[~nan]
    differ = (a != b).sum().item()
    assert differ == 0, f"{differ} of {a.numel()} elements differ"


def scalar_words(seed, offset, n):
    """The first n stream words computed with the scalar Philox of Random123 (no tensor kernels)."""
    key = (seed & 0xFFFFFFFF, seed >> 32)
    words = []
    for j in range((n + 3) // 4):
        c = (offset + j) % 2**64
        words += rng.philox4x32((c & 0xFFFFFFFF, c >> 32, 0, 0), key)
    return words[:n]


def scalar_keep(shape, p, seed, offset=0):
    """Keep-mask of the stream contract: kept iff word >= round(p * 2**32)."""
    t = round(p * 2**32)
    words = scalar_words(seed, offset, math.prod(shape))
    return torch.tensor([w >= t for w in words], dtype=torch.bool).view(shape)


def scalar_uniform(seed, offset, n):
    """u = ((w >> 8) + 0.5) * 2**-24 in float64."""
    return torch.tensor(
        [((w >> 8) + 0.5) * 2.0**-24 for w in scalar_words(seed, offset, n)], dtype=torch.float64
    )


def scalar_normal(seed, offset, n):
    """Box-Muller on consecutive word pairs: (r cos, r sin), r = sqrt(-2 ln u1), angle 2 pi u2."""
    u = scalar_uniform(seed, offset, 2 * ((n + 1) // 2)).tolist()
    z = []
    for k in range(0, len(u), 2):
        r = math.sqrt(-2.0 * math.log(u[k]))
        z += [r * math.cos(2 * math.pi * u[k + 1]), r * math.sin(2 * math.pi * u[k + 1])]
    return torch.tensor(z[:n], dtype=torch.float64)
