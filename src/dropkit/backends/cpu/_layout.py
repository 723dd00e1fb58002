"""How the broadcast kernels walk a tensor: the loop nest over its strides, and which layouts
they take (at most ``MAX_DIMS`` dims of size > 1, the dtypes of the C library)."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import torch

from dropkit.backends._shared import check_mask_shape
from dropkit.backends.cpu import _native
from dropkit.backends.cpu._native import DTYPE_CODES

__all__ = ["MAX_DIMS", "supports_layout", "plan", "checked_layout", "require_layout"]

# The most dims of size > 1 the C loop nest takes (dk_bcast.c); declared in the backend contract.
MAX_DIMS = 8


def _loop_nest(
    shape: Sequence[int], x_strides: Sequence[int], y_strides: Sequence[int], mask_shape: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """The (size, x stride, y stride, mask stride) dims the C kernel iterates, outermost first.

    Dims of size 1 are dropped, the rest ordered by the output's strides (memory order, so
    channels_last runs over memory once), and neighbours merged where all three strides allow;
    the mask strides are the row-major strides of ``mask_shape``, 0 on its broadcast dims.
    """
    m_strides, acc = [0] * len(mask_shape), 1
    for d in reversed(range(len(mask_shape))):
        m_strides[d] = acc if mask_shape[d] != 1 else 0
        acc *= mask_shape[d]
    dims = [(shape[d], x_strides[d], y_strides[d], m_strides[d]) for d in range(len(shape)) if shape[d] != 1]
    dims.sort(key=lambda t: -abs(t[2]))  # stable: equal strides keep their logical order
    merged: list[tuple[int, int, int, int]] = []
    for size, xs, ys, ms in dims:
        if merged:
            psize, pxs, pys, pms = merged[-1]
            if pxs == xs * size and pys == ys * size and pms == ms * size:
                merged[-1] = (psize * size, xs, ys, ms)
                continue
        merged.append((size, xs, ys, ms))
    if len(merged) > MAX_DIMS:  # supports_layout() said no: dropkit.ops used the reference backend
        raise ValueError(f"more than {MAX_DIMS} non-mergeable dims")
    return merged or [(1, 1, 1, 0)]


@functools.lru_cache(maxsize=1024)
def plan(
    shape: tuple[int, ...], x_strides: tuple[int, ...], y_strides: tuple[int, ...],
    mask_shape: tuple[int, ...],
) -> tuple:
    """:func:`_loop_nest` as the C kernel's arguments ``(nd, sizes, x strides, y strides, mask
    strides)``, built once per layout: a model calls its layers with the same shapes every step."""
    nest = _loop_nest(shape, x_strides, y_strides, mask_shape)
    array = ctypes.c_int64 * len(nest)
    return (len(nest), *(array(*(t[k] for t in nest)) for k in range(4)))


@functools.lru_cache(maxsize=1024)
def plan_addresses(
    shape: tuple[int, ...], x_strides: tuple[int, ...], y_strides: tuple[int, ...],
    mask_shape: tuple[int, ...],
) -> tuple:
    """``(arguments, arrays)``: :func:`plan`'s arguments with the arrays as their addresses, for
    the CPython entry points (``_native.fast``), and the arrays themselves, which this cache
    entry keeps alive for as long as it hands out their addresses."""
    nest = plan(shape, x_strides, y_strides, mask_shape)
    return (nest[0], *(ctypes.addressof(a) for a in nest[1:])), nest


def supports_layout(x: torch.Tensor, mask_shape: tuple[int, ...]) -> bool:
    """Whether the broadcast kernels take ``x`` as it is (at most 8 dims that are not 1).

    :mod:`dropkit.ops` sends any other tensor to the reference backend.

    Example:
        >>> supports_layout(torch.ones(2, 3, 4), (2, 1, 1))
        True
    """
    return _layout_supported(x.shape, x.dtype)


def _layout_supported(shape: Sequence[int], dtype: torch.dtype) -> bool:
    return _native.lib is not None and dtype in DTYPE_CODES and (
        len(shape) <= MAX_DIMS or sum(1 for s in shape if s != 1) <= MAX_DIMS
    )


def checked_layout(x: torch.Tensor, mask_shape: Sequence[int]) -> tuple[tuple[int, ...], bool]:
    """``(mask_shape as a tuple, whether it is x's whole shape on a contiguous x)``, after the checks
    of :func:`check_mask_shape` and :func:`require_layout`; remembered per layout."""
    try:
        return _layout(x.shape, x.dtype, tuple(mask_shape), x.is_contiguous())
    except TypeError:  # unhashable entries: checked (and refused) without the cache
        return _layout.__wrapped__(x.shape, x.dtype, tuple(mask_shape), x.is_contiguous())


@functools.lru_cache(maxsize=1024)
def _layout(shape: torch.Size, dtype: torch.dtype, mask_shape: tuple, contiguous: bool) -> tuple:
    ms = check_mask_shape(shape, mask_shape)
    if not _layout_supported(shape, dtype):
        raise ValueError(_layout_refused(shape, dtype))
    return ms, contiguous and ms == tuple(shape)


def _layout_refused(shape: Sequence[int], dtype: torch.dtype) -> str:
    return (f"the native broadcast kernels take at most {MAX_DIMS} dims of size > 1 and "
            f"dtypes {sorted(map(str, DTYPE_CODES))}; got {tuple(shape)} {dtype}")


def require_layout(x: torch.Tensor, mask_shape: tuple[int, ...]) -> None:
    """Raise the ValueError that names ``x``'s shape and dtype if the kernels cannot take it."""
    if not supports_layout(x, mask_shape):
        raise ValueError(_layout_refused(x.shape, x.dtype))
