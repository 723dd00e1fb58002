"""Uniforms, normals and Gaussian noise from the stream, computed in C on the chosen SIMD path
(the normals by the Box-Muller transform of :func:`dropkit.backends._shared.box_muller`)."""

from __future__ import annotations

import torch

from dropkit.backends.cpu import _native
from dropkit.backends.cpu._native import DTYPE_CODES, check, unavailable

__all__ = ["uniform", "normal", "gaussian_apply"]



def uniform(
    numel: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``numel`` uniforms in (0, 1) from ``numel`` stream words, ``((w >> 8) + 0.5) * 2**-24``.

    float64 is exact; float32 is rounded to nearest with the one value that would round to 1
    clamped below it, as :func:`dropkit.rng.words_to_uniform` gives them.

    Example:
        >>> from dropkit.backends import reference
        >>> u = uniform(9, 3, 2**32 - 1, torch.float32)
        >>> torch.equal(u, reference.uniform(9, 3, 2**32 - 1, torch.float32))
        True
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"uniforms are float32 or float64, got {dtype}")
    if _native.lib is None:
        unavailable()
    out = torch.empty(numel, dtype=dtype)
    if numel:
        _native.lib.dk_uniform(seed, offset, numel, dtype == torch.float64, out.data_ptr(),
                               torch.get_num_threads())
    return out


def normal(
    numel: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``numel`` standard normals of the stream, computed in C on the chosen SIMD path.

    The transform is :func:`dropkit.backends._shared.box_muller` (fixed float64 polynomials,
    no fused multiply-add), so the result equals the reference backend's bit for bit; float64
    and float32 are written directly, other dtypes rounded once from float64.

    Shape:
        Output: ``(numel,)``.

    Example:
        >>> from dropkit.backends import reference
        >>> torch.equal(normal(7, 3, 5, torch.float32), reference.normal(7, 3, 5, torch.float32))
        True
    """
    if _native.lib is None:
        unavailable()
    direct = dtype in (torch.float32, torch.float64)
    out = torch.empty(numel, dtype=dtype if direct else torch.float64)
    if numel:
        check(_native.lib.dk_normal(_native.isa, seed, offset, numel, out.dtype == torch.float64,
                                    out.data_ptr(), torch.get_num_threads()))
    return out if direct else out.to(dtype)


def gaussian_apply(x: torch.Tensor, seed: int, offset: int, c: float, additive: bool) -> torch.Tensor:
    """Gaussian noise applied in one pass: ``y = x + c * z`` (``additive``) or ``y = x * (1 + c * z)``.

    Normal ``i`` of the stream meets element ``i`` of ``x`` (row-major); the normals are computed
    tile by tile beside the data and never stored. Rounded as
    :func:`dropkit.backends.reference.gaussian_apply` rounds (compute dtype float64 for float64,
    float32 otherwise; no fused multiply-add).

    Shape:
        x: ``(*)``; output: same shape (contiguous).

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.randn(100)
        >>> torch.equal(gaussian_apply(x, 1, 0, 0.5, False), reference.gaussian_apply(x, 1, 0, 0.5, False))
        True
    """
    if _native.lib is None:
        unavailable()
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        check(_native.lib.dk_gaussian(_native.isa, DTYPE_CODES[x.dtype], x.data_ptr(), y.data_ptr(), seed,
                                      offset, n, float(c), bool(additive), torch.get_num_threads()))
    return y
