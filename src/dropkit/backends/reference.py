"""The reference backend: torch operations only, any device, slow and plainly right.

It is the oracle that the native CPU and Triton backends are tested against bit for bit.
"""

from __future__ import annotations

import torch

from dropkit.rng import philox_words

__all__ = ["keep_mask", "pack_mask", "unpack_mask", "dropout_forward", "dropout_backward"]

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
