"""DropBlock (Ghiasi et al., 2018): the block mask built from the seed grid in one threaded C
pass, with its kept count, then applied by the broadcast kernel of :mod:`._masks`."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import torch

from dropkit.backends._shared import dropblock_applied_scale, dropblock_mask_shape, dropblock_scale
from dropkit.backends.cpu import _native
from dropkit.backends.cpu._elementwise import unpack
from dropkit.backends.cpu._layout import require_layout
from dropkit.backends.cpu._masks import bcast_apply, bits_of_saved
from dropkit.backends.cpu._native import STORAGES, check, new_saved, unavailable

__all__ = ["dropblock_mask", "dropblock_forward", "dropblock_backward"]

_OP_SCALE = 0



def dropblock_mask(
    shape: Sequence[int], block_size: Sequence[int], seed: int, offset: int, threshold: int,
    shared_channels: bool = False, device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask over ``(N, C or 1, *spatial)`` and its kept count, in one threaded pass.

    ``block_size`` is clipped to the map already; seed word ``k`` is element ``k`` of the seed
    grid ``(N, C or 1, f - b + 1, ...)``, a seed iff the word is below ``threshold``; position
    ``y`` is dropped iff a seed lies at ``y - b + 1 .. y`` along every spatial axis.

    Shape:
        shape: ``(N, C, H, W)`` or ``(N, C, D, H, W)``; output: bool ``(N, C or 1, *spatial)``.

    Example:
        >>> from dropkit.backends import reference
        >>> keep, kept = dropblock_mask((2, 3, 8, 8), (3, 3), 0, 0, 2**28)
        >>> ref_keep, ref_kept = reference.dropblock_mask((2, 3, 8, 8), (3, 3), 0, 0, 2**28)
        >>> torch.equal(keep, ref_keep) and kept == ref_kept
        True
    """
    if _native.lib is None:
        unavailable()
    keep_bits, kept = _dropblock_bits(shape, block_size, seed, offset, threshold, shared_channels)
    ms = (shape[0], 1 if shared_channels else shape[1], *shape[2:])
    return unpack(keep_bits, math.prod(ms)).view(ms), kept



def _dropblock_bits(
    shape: Sequence[int], block_size: Sequence[int], seed: int, offset: int, threshold: int,
    shared_channels: bool,
) -> tuple[torch.Tensor, int]:
    """The packed block mask over ``(N, C or 1, *spatial)`` and its kept count."""
    shape = tuple(int(s) for s in shape)
    blocks = tuple(int(b) for b in block_size)
    if len(shape) - 2 != len(blocks) or len(blocks) not in (2, 3):
        raise ValueError(f"shape {shape} and block_size {blocks}: need (N, C, *spatial), 2 or 3 spatial dims")
    ms = (shape[0], 1 if shared_channels else shape[1], *shape[2:])
    n = math.prod(ms)
    bits = new_saved(n, "bits")  # the kernel writes every byte
    if n == 0:
        return bits, 0
    dims = ctypes.c_int64 * len(blocks)
    kept = ctypes.c_int64(0)
    check(
        _native.lib.dk_dropblock_mask(
            _native.isa, seed, offset, threshold, ms[0] * ms[1], len(blocks), dims(*shape[2:]), dims(*blocks),
            bits.data_ptr(), ctypes.addressof(kept), torch.get_num_threads(),
        )
    )
    return bits, int(kept.value)


def dropblock_forward(
    x: torch.Tensor, block_size: Sequence[int], seed: int, offset: int, threshold: int,
    shared_channels: bool, storage: str,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """DropBlock on a batched ``x`` (N, C, *spatial) in one pass: ``(y, saved, scale)``.

    The block mask comes from :func:`dropblock_mask`, ``scale`` =
    :func:`dropkit.backends.reference.dropblock_scale` (count of mask elements over kept ones, in
    float32; 0 when nothing is kept) from the mask's count, and
    ``y = where(keep[broadcast], x * scale, +0.0)`` with ``scale`` rounded to ``x``'s dtype and
    the product rounded once. ``threshold`` is ``keep_threshold(gamma)``.

    Shape:
        x: ``(N, C, *spatial)``; y: same; saved: the block mask ``(N, C or 1, *spatial)`` as
        bits, bools or nothing ("seed": rebuilt in backward).

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.ones(2, 3, 8, 8)
        >>> y, bits, scale = dropblock_forward(x, (3, 3), 0, 0, 2**28, False, "bits")
        >>> torch.equal(y, reference.dropblock_forward(x, (3, 3), 0, 0, 2**28, False, "bits")[0])
        True
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    ms = dropblock_mask_shape(x.shape, shared_channels)
    require_layout(x, ms)
    bits, kept = _dropblock_bits(x.shape, block_size, seed, offset, threshold, shared_channels)
    scale = dropblock_scale(math.prod(ms), kept)
    y = torch.empty_like(x)
    if x.numel():
        bcast_apply(_OP_SCALE, x, y, bits, ms, dropblock_applied_scale(scale, x.dtype))
    if storage == "bits":
        saved = bits
    else:
        saved = unpack(bits, math.prod(ms)) if storage == "bool" else _native.NOTHING
    return y, saved, scale


def dropblock_backward(
    grad: torch.Tensor, saved: torch.Tensor, block_size: Sequence[int], seed: int, offset: int,
    threshold: int, shared_channels: bool, scale: float, storage: str,
) -> torch.Tensor:
    """DropBlock's gradient ``where(keep[broadcast], grad * scale, +0.0)``; "seed" rebuilds the mask.

    ``scale`` is the float :func:`dropblock_forward` returned.

    Example:
        >>> g = torch.ones(2, 3, 8, 8)
        >>> _, bits, s = dropblock_forward(g, (3, 3), 0, 0, 2**28, False, "bits")
        >>> torch.equal(dropblock_backward(g, bits, (3, 3), 0, 0, 2**28, False, s, "bits"),
        ...             dropblock_backward(g, bits, (3, 3), 0, 0, 2**28, False, s, "seed"))
        True
    """
    ms = dropblock_mask_shape(grad.shape, shared_channels)
    require_layout(grad, ms)
    if storage == "seed":
        bits, _ = _dropblock_bits(grad.shape, block_size, seed, offset, threshold, shared_channels)
    else:
        bits = bits_of_saved(saved, math.prod(ms), seed, offset, threshold, storage)
    out = torch.empty_like(grad)
    if grad.numel():
        bcast_apply(_OP_SCALE, grad, out, bits, ms, dropblock_applied_scale(scale, grad.dtype))
    return out
