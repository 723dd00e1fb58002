"""What every backend states the same way: compute dtypes, mask shapes, DropBlock's scale,
the bit layout of a saved mask. Pure functions of shapes, scalars and stored bits; nothing here
draws a random word, so backends share them without calling one another.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "opmath_dtype",
    "check_mask_shape",
    "dropblock_mask_shape",
    "dropblock_scale",
    "dropblock_applied_scale",
    "unpack_mask",
    "dropblock_seed_shape",
    "blocks_kept",
    "box_muller",
]

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype dropout's product is computed in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_mask_shape(shape: Sequence[int], mask_shape: Sequence[int]) -> tuple[int, ...]:
    """``mask_shape`` as a tuple, after checking it has ``shape``'s rank and each dim is 1 or equal.

    Example:
        >>> check_mask_shape((4, 3, 5), [4, 1, 1])
        (4, 1, 1)
    """
    try:
        return _checked_mask_shape(tuple(shape), tuple(mask_shape))
    except TypeError:  # unhashable entries: checked (and refused) without the cache
        return _checked_mask_shape.__wrapped__(tuple(shape), tuple(mask_shape))


@functools.lru_cache(maxsize=1024)
def _checked_mask_shape(shape: tuple[int, ...], mask_shape: tuple) -> tuple[int, ...]:
    ms = tuple(int(m) for m in mask_shape)
    if len(ms) != len(shape) or any(m not in (1, s) for m, s in zip(ms, shape, strict=True)):
        raise ValueError(f"mask_shape {ms} must have the rank of {shape}, each dim 1 or equal to it")
    return ms


def dropblock_mask_shape(shape: Sequence[int], shared_channels: bool) -> tuple[int, ...]:
    """``(N, C or 1, *spatial)``: the shape of DropBlock's mask for an input of ``shape``."""
    return (shape[0], 1 if shared_channels else shape[1], *shape[2:])


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


def dropblock_applied_scale(scale: float, dtype: torch.dtype) -> float:
    """The float32 scale rounded to ``dtype``, as ``x * scale.to(x.dtype)`` rounds it."""
    return float(torch.tensor(scale, dtype=torch.float32).to(dtype))


def unpack_mask(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: the first ``numel`` bits as a flat bool tensor."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return ((bits.view(-1, 1) & weights) != 0).reshape(-1)[:numel]


def dropblock_seed_shape(
    shape: Sequence[int], blocks: Sequence[int], shared_channels: bool
) -> tuple[int, ...]:
    """The seed grid ``(N, C or 1, f - b + 1, ...)`` of DropBlock on ``shape`` with ``blocks``.

    Example:
        >>> dropblock_seed_shape((2, 3, 8, 8), (3, 3), False)
        (2, 3, 6, 6)
    """
    valid = tuple(f - b + 1 for f, b in zip(shape[2:], blocks, strict=True))
    return (shape[0], 1 if shared_channels else shape[1], *valid)


def blocks_kept(seeds: torch.Tensor, blocks: Sequence[int]) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask from a bool seed grid, and its kept count.

    Position ``y`` is dropped iff a seed lies at ``y - b + 1 .. y`` along every spatial axis:
    padding ``b - 1`` on both sides and max-pooling with a ``b``-wide window takes that OR.

    Example:
        >>> seeds = torch.zeros(1, 1, 2, 2, dtype=torch.bool); seeds[0, 0, 0, 0] = True
        >>> keep, kept = blocks_kept(seeds, (3, 3))
        >>> kept, keep[0, 0, :3, :3].any().item()
        (7, False)
    """
    blocks = tuple(blocks)
    pad = [s for b in reversed(blocks) for s in (b - 1, b - 1)]
    pool = F.max_pool2d if len(blocks) == 2 else F.max_pool3d
    keep = pool(F.pad(seeds.to(torch.float32), pad), kernel_size=blocks, stride=1) == 0
    return keep, int(keep.sum())


def box_muller(u: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` standard normals from float64 uniforms ``u`` (``2 * ceil(numel / 2)`` of them).

    Pair ``k`` takes ``u1 = u[2k]`` and ``u2 = u[2k + 1]`` and gives
    ``z[2k] = sqrt(-2 ln u1) cos(2 pi u2)`` and ``z[2k + 1] = sqrt(-2 ln u1) sin(2 pi u2)`` in
    float64, rounded once to ``dtype``. Every backend that draws the uniforms itself hands them
    here, so the transcendental functions (torch's) are the same everywhere.

    Example:
        >>> z = box_muller(torch.tensor([0.5, 0.25], dtype=torch.float64), 2, torch.float64)
        >>> torch.allclose(z, torch.tensor([0.0, (2 * math.log(2)) ** 0.5], dtype=torch.float64), atol=1e-12)
        True
    """
    pairs = u.view(-1, 2)
    r = torch.sqrt(-2.0 * torch.log(pairs[:, 0]))
    angle = (2.0 * math.pi) * pairs[:, 1]
    z = torch.stack((r * torch.cos(angle), r * torch.sin(angle)), dim=1).reshape(-1)[:numel]
    return z.to(dtype)
