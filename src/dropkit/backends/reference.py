"""The reference backend: torch operations only, any device, slow and plainly right.

It is the oracle that the native CPU and Triton backends are tested against bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

from dropkit.backends._shared import (
    bit_weights,
    blocks_kept,
    box_muller,
    check_mask_shape,
    dropblock_applied_scale,
    dropblock_mask_shape,
    dropblock_scale,
    dropblock_seed_shape,
    opmath_dtype,
    unpack_mask,
)
from dropkit.backends.contract import HOST, NOT_PROVIDED, describe
from dropkit.rng import philox_words, words_to_uniform

__all__ = [
    "BACKEND",
    "keep_mask",
    "pack_mask",
    "unpack_mask",
    "dropout_forward",
    "dropout_backward",
    "uniform",
    "normal",
    "gaussian_apply",
    "check_mask_shape",
    "bcast_keep_mask",
    "bcast_dropout_forward",
    "bcast_dropout_backward",
    "alpha_forward",
    "alpha_backward",
    "dropblock_mask",
    "dropblock_scale",
    "opmath_dtype",
    "dropblock_forward",
    "dropblock_backward",
]



def keep_mask(
    numel: int, seed: int, offset: int, threshold: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool keep-mask of shape (numel,): element ``i`` is kept iff word ``i`` >= ``threshold``."""
    if threshold <= 0:
        return torch.ones(numel, dtype=torch.bool, device=device)
    return philox_words(seed, offset, numel, device=device) >= threshold


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a flat bool mask into bytes, element ``i`` in bit ``i % 8`` of byte ``i // 8``."""
    n = mask.numel()
    padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8, device=mask.device)
    padded[:n] = mask.reshape(-1)
    weights = bit_weights(mask.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def _apply(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    opmath = opmath_dtype(x.dtype)
    s = torch.full((), scale, dtype=opmath, device=x.device)
    kept = x.reshape(-1).to(opmath) * s
    y = torch.where(mask, kept, torch.zeros((), dtype=opmath, device=x.device))
    return y.to(x.dtype).reshape(x.shape)


def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float, storage: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep, x * scale, 0)`` and what ``storage`` asks to be saved for backward."""
    mask = keep_mask(x.numel(), seed, offset, threshold, x.device)
    y = _apply(x, mask, scale)
    if storage == "bits":
        saved = pack_mask(mask)
    elif storage == "bool":
        saved = mask
    else:
        saved = torch.empty(0, dtype=torch.uint8, device=x.device)
    return y, saved


def dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, seed: int, offset: int, threshold: int, scale: float,
    storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep, grad * scale, 0)`` with the mask taken from ``saved`` or the stream."""
    n = grad.numel()
    if storage == "bits":
        mask = unpack_mask(saved, n)
    elif storage == "bool":
        mask = saved.reshape(-1)
    else:
        mask = keep_mask(n, seed, offset, threshold, grad.device)
    return _apply(grad, mask, scale)


def uniform(
    numel: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``numel`` uniforms in (0, 1): element ``i`` is ``((w[i] >> 8) + 0.5) * 2**-24`` (numel words).

    Example:
        >>> float(uniform(1, 0, 0, torch.float64)[0]) == ((0x6627e8d5 >> 8) + 0.5) * 2**-24
        True
    """
    return words_to_uniform(philox_words(seed, offset, numel, device=device), dtype)


def normal(
    numel: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``numel`` standard normals by the Box-Muller transform of stream words.

    Pair ``k`` takes the words ``w[2k]`` and ``w[2k + 1]`` (the uniforms ``u1``, ``u2``) and gives
    ``z[2k] = sqrt(-2 ln u1) cos(2 pi u2)`` and ``z[2k + 1] = sqrt(-2 ln u1) sin(2 pi u2)``, the
    logarithm, cosine and sine being the fixed float64 polynomials of
    :func:`dropkit.backends._shared.box_muller`, rounded once to ``dtype``; ``2 * ceil(numel / 2)``
    words are used. The uniforms lie in the open interval (0, 1), so the logarithm is finite.

    Example:
        >>> z = normal(3, 0, 0, torch.float64)
        >>> u = uniform(4, 0, 0, torch.float64)
        >>> exact = torch.sqrt(-2 * torch.log(u[0])) * torch.cos(2 * math.pi * u[1])
        >>> bool(abs(z[0] - exact) < 1e-15)
        True
    """
    return box_muller(philox_words(seed, offset, 2 * ((numel + 1) // 2), device=device), numel, dtype)


def gaussian_apply(x: torch.Tensor, seed: int, offset: int, c: float, additive: bool) -> torch.Tensor:
    """Gaussian noise applied to ``x``: ``y = x + c * z`` (``additive``) or ``y = x * (1 + c * z)``.

    ``z`` is :func:`normal` ``i`` for element ``i`` of ``x`` (row-major), drawn in the compute
    dtype (float64 for float64 tensors, else float32) as :func:`normal` rounds it; ``c`` is
    rounded to that dtype, each product and sum is rounded there, and the result once to ``x``'s
    dtype. Gaussian dropout is the multiplicative form with ``c = sqrt(p / (1 - p))`` and its
    gradient the same map of the incoming gradient; Gaussian noise is the additive form.

    Shape:
        x: ``(*)``; output: same shape (contiguous).

    Example:
        >>> x = torch.ones(4)
        >>> z = normal(4, 1, 0, torch.float32)
        >>> torch.equal(gaussian_apply(x, 1, 0, 0.5, False), x * (1 + torch.tensor(0.5) * z))
        True
    """
    dt = opmath_dtype(x.dtype)
    z = normal(x.numel(), seed, offset, dt, x.device).view(x.shape)
    cz = torch.full((), c, dtype=dt, device=x.device) * z
    xc = x.to(dt)
    y = xc + cz if additive else xc * (1.0 + cz)
    return y.to(x.dtype)


def _saved_of(mask: torch.Tensor, storage: str) -> torch.Tensor:
    if storage == "bits":
        return pack_mask(mask)
    if storage == "bool":
        return mask.reshape(-1)
    if storage == "seed":
        return torch.empty(0, dtype=torch.uint8, device=mask.device)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def bcast_keep_mask(
    mask_shape: Sequence[int], seed: int, offset: int, threshold: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool keep-mask of shape ``mask_shape``: element ``j`` (row-major) is kept iff word ``j`` >= t."""
    return keep_mask(math.prod(mask_shape), seed, offset, threshold, device).view(tuple(mask_shape))


def _mask_from(
    saved: torch.Tensor, mask_shape: tuple[int, ...], seed: int, offset: int, threshold: int, storage: str,
    device: torch.device | str | None,
) -> torch.Tensor:
    n = math.prod(mask_shape)
    if storage == "bits":
        return unpack_mask(saved, n).view(mask_shape)
    if storage == "bool":
        return saved.reshape(mask_shape)
    if storage == "seed":
        return bcast_keep_mask(mask_shape, seed, offset, threshold, device)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def _scale_zero(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    opmath = opmath_dtype(x.dtype)
    s = torch.full((), scale, dtype=opmath, device=x.device)
    y = torch.where(mask, x.to(opmath) * s, torch.zeros((), dtype=opmath, device=x.device))
    return y.to(x.dtype)


def bcast_dropout_forward(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep[broadcast], x * scale, +0.0)`` with the mask drawn over ``mask_shape``.

    Mask element ``j`` (row-major over ``mask_shape``) uses word ``j``; the product is rounded
    as :func:`dropout_forward` rounds it. ``saved`` holds the reduced mask (bits, bool or nothing).
    """
    ms = check_mask_shape(x.shape, mask_shape)
    mask = bcast_keep_mask(ms, seed, offset, threshold, x.device)
    return _scale_zero(x, mask, scale), _saved_of(mask, storage)


def bcast_dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``, the mask from ``saved`` or the stream."""
    ms = check_mask_shape(grad.shape, mask_shape)
    return _scale_zero(grad, _mask_from(saved, ms, seed, offset, threshold, storage, grad.device), scale)


def alpha_forward(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, a: float, b: float,
    fill: float, storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha dropout's replacement ``y = where(keep[broadcast], x * a + b, fill)``.

    ``a``, ``b`` and ``fill`` (``a * alpha' + b``) are rounded to the opmath dtype (float64 for
    float64, else float32); ``x * a`` and ``+ b`` are each rounded in it, and the result once
    to ``x``'s dtype.
    """
    ms = check_mask_shape(x.shape, mask_shape)
    mask = bcast_keep_mask(ms, seed, offset, threshold, x.device)
    dt = opmath_dtype(x.dtype)
    a_t, b_t, fill_t = (torch.full((), v, dtype=dt, device=x.device) for v in (a, b, fill))
    y = torch.where(mask, x.to(dt) * a_t + b_t, fill_t).to(x.dtype)
    return y, _saved_of(mask, storage)


def alpha_backward(
    grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int,
    threshold: int, a: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * a, +0.0)``, as :func:`bcast_dropout_backward`."""
    return bcast_dropout_backward(grad, saved, mask_shape, seed, offset, threshold, a, storage)


def dropblock_mask(
    shape: Sequence[int], block_size: Sequence[int], seed: int, offset: int, threshold: int,
    shared_channels: bool = False, device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask over ``(N, C or 1, *spatial)`` and its kept count.

    ``block_size`` is already clipped to the map. Seed word ``k`` is element ``k`` of the seed
    grid ``(N, C or 1, f - b + 1, ...)``; a seed is set iff its word is below ``threshold``,
    and mask position ``y`` is dropped iff a seed lies at ``y - b + 1 .. y`` along every axis.
    """
    seed_shape = dropblock_seed_shape(tuple(shape), tuple(block_size), shared_channels)
    seeds = ~keep_mask(math.prod(seed_shape), seed, offset, threshold, device)
    return blocks_kept(seeds.view(seed_shape), block_size)


def dropblock_forward(
    x: torch.Tensor, block_size: Sequence[int], seed: int, offset: int, threshold: int,
    shared_channels: bool, storage: str,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """DropBlock on a batched ``x`` (N, C, *spatial): ``(y, saved, scale)``.

    ``y = where(keep[broadcast], x * scale, +0.0)`` with ``scale`` = :func:`dropblock_scale`
    rounded to ``x``'s dtype and the product rounded once; ``saved`` is the reduced block mask.
    """
    keep, kept = dropblock_mask(x.shape, block_size, seed, offset, threshold, shared_channels, x.device)
    scale = dropblock_scale(keep.numel(), kept)
    y = _scale_zero(x, keep, dropblock_applied_scale(scale, x.dtype))
    return y, _saved_of(keep, storage), scale


def dropblock_backward(
    grad: torch.Tensor, saved: torch.Tensor, block_size: Sequence[int], seed: int, offset: int,
    threshold: int, shared_channels: bool, scale: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``; ``"seed"`` rebuilds the block mask."""
    ms = dropblock_mask_shape(grad.shape, shared_channels)
    if storage == "seed":
        shape = grad.shape
        keep, _ = dropblock_mask(shape, block_size, seed, offset, threshold, shared_channels, grad.device)
    else:
        keep = _mask_from(saved, ms, seed, offset, threshold, storage, grad.device)
    return _scale_zero(grad, keep, dropblock_applied_scale(scale, grad.dtype))


# Stream positions arrive as Python ints; every dtype and device is served, every kernel but the
# fused ones (and the redraw shortcut of the native backend) provided.
BACKEND = describe(sys.modules[__name__], "reference", HOST, dtypes=None, max_dims=None,
                   bcast_dropout_redraw=NOT_PROVIDED, fused_attention=NOT_PROVIDED, fused_norm=NOT_PROVIDED)
