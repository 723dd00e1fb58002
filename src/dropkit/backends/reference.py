"""The reference backend: torch operations only, any device, slow and plainly right.

It is the oracle that the native CPU and Triton backends are tested against bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dropkit.rng import philox_words

__all__ = [
    "keep_mask",
    "pack_mask",
    "unpack_mask",
    "dropout_forward",
    "dropout_backward",
    "check_mask_shape",
    "bcast_keep_mask",
    "bcast_dropout_forward",
    "bcast_dropout_backward",
    "alpha_forward",
    "alpha_backward",
    "dropblock_mask",
    "dropblock_scale",
    "dropblock_forward",
    "dropblock_backward",
]

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


def _saved_of(mask: torch.Tensor, storage: str) -> torch.Tensor:
    if storage == "bits":
        return pack_mask(mask)
    if storage == "bool":
        return mask.reshape(-1)
    if storage == "seed":
        return torch.empty(0, dtype=torch.uint8, device=mask.device)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def check_mask_shape(shape: Sequence[int], mask_shape: Sequence[int]) -> tuple[int, ...]:
    """``mask_shape`` as a tuple, after checking it has ``shape``'s rank and each dim is 1 or equal.

    Example:
        >>> check_mask_shape((4, 3, 5), [4, 1, 1])
        (4, 1, 1)
    """
    ms = tuple(int(m) for m in mask_shape)
    if len(ms) != len(shape) or any(m not in (1, s) for m, s in zip(ms, shape, strict=True)):
        raise ValueError(f"mask_shape {ms} must have the rank of {tuple(shape)}, each dim 1 or equal to it")
    return ms


def bcast_keep_mask(
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool keep-mask of shape ``mask_shape``: element ``j`` (row-major) is kept iff word ``j`` >= t."""
    return keep_mask(math.prod(mask_shape), seed, offset, threshold, device).view(tuple(mask_shape))


def _mask_from(
    saved: torch.Tensor,
    mask_shape: tuple[int, ...],
    seed: int,
    offset: int,
    threshold: int,
    storage: str,
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
    s = torch.tensor(scale, dtype=opmath, device=x.device)
    y = torch.where(mask, x.to(opmath) * s, torch.zeros((), dtype=opmath, device=x.device))
    return y.to(x.dtype)


def bcast_dropout_forward(
    x: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
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
    grad: torch.Tensor,
    saved: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``, the mask from ``saved`` or the stream."""
    ms = check_mask_shape(grad.shape, mask_shape)
    return _scale_zero(grad, _mask_from(saved, ms, seed, offset, threshold, storage, grad.device), scale)


def alpha_forward(
    x: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    a: float,
    b: float,
    fill: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha dropout's replacement ``y = where(keep[broadcast], x * a + b, fill)``.

    ``a``, ``b`` and ``fill`` (``a * alpha' + b``) are rounded to the opmath dtype (float64 for
    float64, else float32); ``x * a`` and ``+ b`` are each rounded in it, and the result once
    to ``x``'s dtype.
    """
    ms = check_mask_shape(x.shape, mask_shape)
    mask = bcast_keep_mask(ms, seed, offset, threshold, x.device)
    dt = opmath_dtype(x.dtype)
    a_t, b_t, fill_t = (torch.tensor(v, dtype=dt, device=x.device) for v in (a, b, fill))
    y = torch.where(mask, x.to(dt) * a_t + b_t, fill_t).to(x.dtype)
    return y, _saved_of(mask, storage)


def alpha_backward(
    grad: torch.Tensor,
    saved: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    a: float,
    storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * a, +0.0)``, as :func:`bcast_dropout_backward`."""
    return bcast_dropout_backward(grad, saved, mask_shape, seed, offset, threshold, a, storage)


def _dropblock_mask_shape(shape: Sequence[int], shared_channels: bool) -> tuple[int, ...]:
    return (shape[0], 1 if shared_channels else shape[1], *shape[2:])


def dropblock_mask(
    shape: Sequence[int],
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool = False,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask over ``(N, C or 1, *spatial)`` and its kept count.

    ``block_size`` is already clipped to the map. Seed word ``k`` is element ``k`` of the seed
    grid ``(N, C or 1, f - b + 1, ...)``; a seed is set iff its word is below ``threshold``,
    and mask position ``y`` is dropped iff a seed lies at ``y - b + 1 .. y`` along every axis.
    """
    shape = tuple(shape)
    blocks = tuple(block_size)
    spatial = shape[2:]
    valid = tuple(f - b + 1 for f, b in zip(spatial, blocks, strict=True))
    seed_shape = (shape[0], 1 if shared_channels else shape[1], *valid)
    seeds = ~keep_mask(math.prod(seed_shape), seed, offset, threshold, device)
    seeds = seeds.view(seed_shape).to(torch.float32)
    pad = [s for b in reversed(blocks) for s in (b - 1, b - 1)]
    pool = F.max_pool2d if len(blocks) == 2 else F.max_pool3d
    keep = pool(F.pad(seeds, pad), kernel_size=blocks, stride=1) == 0
    return keep, int(keep.sum())


def dropblock_scale(count: int, kept: int) -> float:
    """DropBlock's normalisation ``count / kept`` in float32 (0 when nothing is kept).

    Rounded exactly as the functional form computes ``count / kept`` with a float32 ``kept``
    (torch evaluates a number divided by a tensor as ``kept.reciprocal() * count``): both counts
    rounded to float32, ``1 / kept`` rounded, then the product rounded. The functional form
    summed the mask in float32, which is exact below 2**24 kept elements; here the count is
    always exact.

    Example:
        >>> dropblock_scale(4, 3)
        1.3333333730697632
    """
    if kept == 0:
        return 0.0
    recip = torch.tensor(kept, dtype=torch.float32).reciprocal()
    return float(recip * torch.tensor(count, dtype=torch.float32))


def _dropblock_applied_scale(scale: float, dtype: torch.dtype) -> float:
    """The float32 scale rounded to ``dtype``, as ``x * scale.to(x.dtype)`` rounds it."""
    return float(torch.tensor(scale, dtype=torch.float32).to(dtype))


def dropblock_forward(
    x: torch.Tensor,
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """DropBlock on a batched ``x`` (N, C, *spatial): ``(y, saved, scale)``.

    ``y = where(keep[broadcast], x * scale, +0.0)`` with ``scale`` = :func:`dropblock_scale`
    rounded to ``x``'s dtype and the product rounded once; ``saved`` is the reduced block mask.
    """
    keep, kept = dropblock_mask(x.shape, block_size, seed, offset, threshold, shared_channels, x.device)
    scale = dropblock_scale(keep.numel(), kept)
    y = _scale_zero(x, keep, _dropblock_applied_scale(scale, x.dtype))
    return y, _saved_of(keep, storage), scale


def dropblock_backward(
    grad: torch.Tensor,
    saved: torch.Tensor,
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``; ``"seed"`` rebuilds the block mask."""
    ms = _dropblock_mask_shape(grad.shape, shared_channels)
    if storage == "seed":
        shape = grad.shape
        keep, _ = dropblock_mask(shape, block_size, seed, offset, threshold, shared_channels, grad.device)
    else:
        keep = _mask_from(saved, ms, seed, offset, threshold, storage, grad.device)
    return _scale_zero(grad, keep, _dropblock_applied_scale(scale, grad.dtype))
