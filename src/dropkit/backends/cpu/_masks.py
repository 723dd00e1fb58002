"""Masks shared along broadcast dims (Dropout1d/2d/3d, shared_dims, FeatureAlphaDropout): the
reduced mask drawn from the stream and applied to the whole tensor in one C call, in the
tensor's own layout. Mask element ``j`` (row-major over ``mask_shape``) uses stream word ``j``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dropkit.backends.cpu import _native
from dropkit.backends.cpu._elementwise import dropout_backward, dropout_forward, pack_mask
from dropkit.backends.cpu._layout import checked_layout, plan, plan_addresses
from dropkit.backends.cpu._native import DTYPE_CODES, check, new_saved, run

__all__ = [
    "bcast_apply",
    "mask_bits",
    "bits_of_saved",
    "bcast_dropout_forward",
    "bcast_dropout_redraw",
    "bcast_dropout_backward",
    "alpha_forward",
    "alpha_backward",
]

# The element-wise map of the C apply kernel: where(keep, x * scale, 0) or where(keep, a x + b, c).
_OP_SCALE, _OP_ALPHA = 0, 1


def bcast_apply(
    op: int, x: torch.Tensor, y: torch.Tensor, bits: torch.Tensor, mask_shape: tuple[int, ...],
    scale: float, a: float = 0.0, b: float = 0.0, c: float = 0.0,
) -> None:
    """Write op of ``x`` into ``y`` with the packed mask ``bits`` over ``mask_shape`` (broadcast)."""
    if _native.fast is not None:
        call, nest = _native.fast.bcast_apply, plan_addresses(x.shape, x.stride(), y.stride(), mask_shape)[0]
    else:
        call, nest = _native.lib.dk_bcast_apply, plan(x.shape, x.stride(), y.stride(), mask_shape)
    code = call(
        _native.isa, op, DTYPE_CODES[x.dtype], x.data_ptr(), y.data_ptr(), bits.data_ptr(),
        math.prod(mask_shape), *nest, scale, a, b, c, torch.get_num_threads(),
    )
    if code:
        check(code)


def mask_bits(
    n: int, seed: int, offset: int, threshold: int, bools: torch.Tensor | None = None
) -> torch.Tensor:
    """The packed keep-mask of ``n`` stream words (and, if given, the same mask as bools)."""
    bits = new_saved(n, "bits")
    if n:
        out_b = bools.data_ptr() if bools is not None else None
        run(0, None, None, None, None, bits.data_ptr(), out_b, seed, offset, threshold, 0.0, n)
    return bits


def bits_of_saved(
    saved: torch.Tensor, n: int, seed: int, offset: int, threshold: int, storage: str
) -> torch.Tensor:
    """The packed mask of ``n`` elements from what ``storage`` saved (drawn again for "seed")."""
    if storage == "bits":
        return saved.reshape(-1).contiguous()
    if storage == "bool":
        return pack_mask(saved)
    if storage == "seed":
        return mask_bits(n, seed, offset, threshold)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def _draw_apply(
    op: int, x: torch.Tensor, mask_shape: tuple[int, ...], seed: int, offset: int, threshold: int,
    bits: torch.Tensor | None, bools: torch.Tensor | None, scale: float, a: float = 0.0, b: float = 0.0,
    c: float = 0.0,
) -> torch.Tensor:
    """The output of op with the mask drawn and applied in one C call (the mask written to bits
    and bools where given, else kept nowhere); an empty x draws nothing."""
    y = torch.empty_like(x)
    if x.numel():
        if _native.fast is not None:
            call = _native.fast.bcast_draw_apply
            nest = plan_addresses(x.shape, x.stride(), y.stride(), mask_shape)[0]
        else:
            call, nest = _native.lib.dk_bcast_draw_apply, plan(x.shape, x.stride(), y.stride(), mask_shape)
        code = call(
            _native.isa, op, DTYPE_CODES[x.dtype], x.data_ptr(), y.data_ptr(),
            None if bits is None else bits.data_ptr(), None if bools is None else bools.data_ptr(),
            seed, offset, threshold, math.prod(mask_shape), *nest, scale, a, b, c, torch.get_num_threads(),
        )
        if code:
            check(code)
    return y


def _forward_masked(
    op: int, x: torch.Tensor, mask_shape: tuple[int, ...], seed: int, offset: int, threshold: int,
    storage: str, scale: float, a: float = 0.0, b: float = 0.0, c: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, saved)``: op of ``x`` with the mask drawn in the same call, kept as ``storage`` says."""
    n = math.prod(mask_shape)
    saved = new_saved(n, storage)
    bools = saved if storage == "bool" else None
    bits = saved if storage == "bits" else (None if bools is None else new_saved(n, "bits"))
    y = _draw_apply(op, x, mask_shape, seed, offset, threshold, bits, bools, scale, a, b, c)
    if not x.numel() and n and storage != "seed":  # an empty tensor still draws (and saves) its mask
        bits = mask_bits(n, seed, offset, threshold, bools)
    return y, (bits if storage == "bits" else saved)


def bcast_dropout_forward(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep[broadcast], x * scale, +0.0)`` in one pass over ``x``, mask drawn over ``mask_shape``.

    ``mask_shape`` has ``x``'s rank, each dim equal to ``x``'s or 1; mask element ``j``
    (row-major over ``mask_shape``) uses stream word ``j``, as :func:`keep_mask` of
    ``prod(mask_shape)`` words. The product is rounded as :func:`dropout_forward` rounds it.
    Any strides are read in place; ``y`` keeps ``x``'s memory format (``empty_like``).

    Shape:
        x: ``(*)``; y: same; saved: the reduced mask of ``M = prod(mask_shape)`` elements,
        ``(ceil(M / 8),)`` uint8 ("bits"), ``(M,)`` bool ("bool") or ``(0,)`` uint8 ("seed").

    Example:
        >>> x = torch.ones(4, 3, 5)
        >>> y, bits = bcast_dropout_forward(x, (4, 1, 1), 0, 0, 2**31, 2.0, "bits")
        >>> from dropkit.backends import reference
        >>> torch.equal(y, reference.bcast_dropout_forward(x, (4, 1, 1), 0, 0, 2**31, 2.0, "bits")[0])
        True
    """
    ms, whole = checked_layout(x, mask_shape)
    if whole:
        return dropout_forward(x, seed, offset, threshold, scale, storage)
    return _forward_masked(_OP_SCALE, x, ms, seed, offset, threshold, storage, scale)


def bcast_dropout_redraw(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, scale: float,
) -> torch.Tensor:
    """``where(keep[broadcast], x * scale, +0.0)`` with the mask drawn in the same call and kept
    nowhere: the forward of :func:`bcast_dropout_forward` with ``storage="seed"``, and, called on
    the gradient with the same arguments, its backward (the map is linear and its own adjoint).

    Shape:
        x: ``(*)``; output: same (``x``'s memory format).

    Example:
        >>> x = torch.ones(4, 3, 5)
        >>> y = bcast_dropout_redraw(x, (4, 1, 1), 0, 0, 2**31, 2.0)
        >>> torch.equal(y, bcast_dropout_forward(x, (4, 1, 1), 0, 0, 2**31, 2.0, "seed")[0])
        True
    """
    ms, _ = checked_layout(x, mask_shape)
    return _draw_apply(_OP_SCALE, x, ms, seed, offset, threshold, None, None, scale)


def bcast_dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``, the mask from ``saved`` or regenerated.

    Shape:
        grad: ``(*)``; output: same (``grad``'s memory format); saved as
        :func:`bcast_dropout_forward` gives it.

    Example:
        >>> g = torch.ones(4, 3, 5)
        >>> _, bits = bcast_dropout_forward(g, (1, 3, 5), 0, 0, 2**31, 2.0, "bits")
        >>> torch.equal(bcast_dropout_backward(g, bits, (1, 3, 5), 0, 0, 2**31, 2.0, "bits"),
        ...             bcast_dropout_backward(g, bits, (1, 3, 5), 0, 0, 2**31, 2.0, "seed"))
        True
    """
    ms, whole = checked_layout(grad, mask_shape)
    if whole:
        return dropout_backward(grad, saved, seed, offset, threshold, scale, storage)
    bits = bits_of_saved(saved, math.prod(ms), seed, offset, threshold, storage)
    out = torch.empty_like(grad)
    if grad.numel():
        bcast_apply(_OP_SCALE, grad, out, bits, ms, scale)
    return out


def alpha_forward(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, a: float, b: float,
    fill: float, storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha dropout in one pass: ``y = where(keep[broadcast], x * a + b, fill)``.

    ``a``, ``b`` and ``fill`` (``a * alpha' + b``) are rounded to float32 (float64 for float64
    tensors); ``x * a`` and ``+ b`` are each rounded in that precision (no fused multiply-add)
    and the result once to ``x``'s dtype. The mask is that of :func:`bcast_dropout_forward`
    (``mask_shape == x.shape`` for AlphaDropout, ``(N, C, 1, ...)`` for FeatureAlphaDropout).

    Shape:
        x: ``(*)``; y: same; saved: as :func:`bcast_dropout_forward`.

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.ones(2, 3, 4)
        >>> y, _ = alpha_forward(x, (2, 3, 1), 1, 0, 2**31, 2.0, 0.5, -1.0, "seed")
        >>> torch.equal(y, reference.alpha_forward(x, (2, 3, 1), 1, 0, 2**31, 2.0, 0.5, -1.0, "seed")[0])
        True
    """
    ms, _ = checked_layout(x, mask_shape)
    return _forward_masked(_OP_ALPHA, x, ms, seed, offset, threshold, storage, 0.0, a, b, fill)


def alpha_backward(
    grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int,
    threshold: int, a: float, storage: str,
) -> torch.Tensor:
    """Alpha dropout's gradient ``where(keep[broadcast], grad * a, +0.0)`` (rounded as dropout's).

    Example:
        >>> from dropkit.backends import reference
        >>> g = torch.ones(2, 3, 4)
        >>> torch.equal(alpha_backward(g, torch.empty(0), (2, 3, 1), 1, 0, 2**31, 2.0, "seed"),
        ...             reference.alpha_backward(g, torch.empty(0), (2, 3, 1), 1, 0, 2**31, 2.0, "seed"))
        True
    """
    return bcast_dropout_backward(grad, saved, mask_shape, seed, offset, threshold, a, storage)
