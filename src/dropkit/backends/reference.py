"""The reference backend: torch operations only, any device, slow and plainly right.

It is the oracle that the native CPU and Triton backends are tested against bit for bit.
"""

from __future__ import annotations

import math

import torch

from dropkit.rng import philox_words, words_to_uniform

__all__ = [
    "POSITION",
    "DTYPES",
    "keep_mask",
    "pack_mask",
    "unpack_mask",
    "dropout_forward",
    "dropout_backward",
    "uniform",
    "normal",
]

# Stream positions arrive as Python ints; every dtype and device is served.
POSITION = "host"
DTYPES = None

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype dropout's product is computed in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_mask(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: the first ``numel`` bits as a flat bool tensor."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return ((bits.view(-1, 1) & weights) != 0).reshape(-1)[:numel]


def _apply(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    opmath = opmath_dtype(x.dtype)
    s = torch.tensor(scale, dtype=opmath, device=x.device)
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
    grad: torch.Tensor,
    saved: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
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
    """``numel`` standard normals by the Box-Muller transform of stream uniforms.

    Pair ``k`` takes ``u1 = U(w[2k])`` and ``u2 = U(w[2k + 1])`` (float64) and gives
    ``z[2k] = sqrt(-2 ln u1) cos(2 pi u2)`` and ``z[2k + 1] = sqrt(-2 ln u1) sin(2 pi u2)``,
    rounded once to ``dtype``; ``2 * ceil(numel / 2)`` words are used. The uniforms lie in the
    open interval (0, 1), so the logarithm is always finite.

    Example:
        >>> z = normal(3, 0, 0, torch.float64)
        >>> u = uniform(4, 0, 0, torch.float64)
        >>> bool(z[0] == torch.sqrt(-2 * torch.log(u[0])) * torch.cos(2 * math.pi * u[1]))
        True
    """
    u = uniform(2 * ((numel + 1) // 2), seed, offset, torch.float64, device).view(-1, 2)
    r = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    angle = (2.0 * math.pi) * u[:, 1]
    z = torch.stack((r * torch.cos(angle), r * torch.sin(angle)), dim=1).reshape(-1)[:numel]
    return z.to(dtype)
