"""Masks with broadcast dims, alpha dropout and DropBlock: one pass over the full tensor.

Each kind is a pair of backend kernels (forward -> ``(y, saved[, scale])``, backward -> grad_in)
over a mask of a reduced shape; the pairs differ only in their parameters:

=========== ================================ ===================== ==========================
kind        forward                          params                backward params
=========== ================================ ===================== ==========================
"bcast"     ``where(keep, x * scale, 0)``    ``(scale,)``          ``(scale,)``
"alpha"     ``where(keep, a x + b, fill)``   ``(a, b, fill)``      ``(a,)``
"dropblock" ``where(keep, x * count/kept, 0)`` ``(shared_channels,)`` ``(shared, scale)``
=========== ================================ ===================== ==========================

``shape_arg`` is the reduced mask shape ("bcast", "alpha") or the block size ("dropblock").
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import List  # noqa: UP035 (torch 2.5's custom ops need it, below)

import torch

from dropkit import _torch
from dropkit.backends._shared import saved_like
from dropkit.backends.contract import HOST, Backend
from dropkit.ops import _dispatch as dispatch
from dropkit.ops._autograd import adjoint, saves
from dropkit.ops._inputs import plain, shape_only

# kind -> (forward kernel, backward kernel): fields of the backend contract.
_KERNELS = {
    "bcast": ("bcast_dropout_forward", "bcast_dropout_backward"),
    "alpha": ("alpha_forward", "alpha_backward"),
    "dropblock": ("dropblock_forward", "dropblock_backward"),
}
_FORWARD = {kind: attrgetter(names[0]) for kind, names in _KERNELS.items()}
_BACKWARD = {kind: attrgetter(names[1]) for kind, names in _KERNELS.items()}


def _backend(kind: str, x: torch.Tensor, which: int) -> Backend:
    """The backend for ``kind`` on ``x``; the reference one where ``x`` has more dims of size > 1
    than the backend's kernels take (its declared ``max_dims``)."""
    backend = dispatch.backend_of(x, _KERNELS[kind][which])
    limit = backend.max_dims
    if limit is not None and x.dim() > limit and sum(1 for s in x.shape if s != 1) > limit:
        return dispatch.REFERENCE
    return backend


def _forward_body(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, kind: str, shape_arg: list[int],
    threshold: int, params: list[float], storage: str,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(y, saved, extra)`` from the backend; ``extra`` is DropBlock's scale (else 0.0)."""
    backend = _backend(kind, x, 0)
    seed, offset = dispatch.position(backend, seed, offset, x.device)
    if kind == "dropblock":
        params = (bool(params[0]),)
    out = _FORWARD[kind](backend)(x, tuple(shape_arg), seed, offset, threshold, *params, storage)
    return out[0], out[1], (out[2] if len(out) > 2 else 0.0)


def _backward_body(
    grad: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, saved: torch.Tensor, kind: str,
    shape_arg: list[int], threshold: int, bparams: list[float], extra: float, storage: str,
) -> torch.Tensor:
    """The backward map of ``kind``; ``bparams`` is the first forward parameter."""
    backend = _backend(kind, grad, 1)
    seed, offset = dispatch.position(backend, seed, offset, grad.device)
    if kind == "dropblock":
        bparams = (bool(bparams[0]), float(extra))
    return _BACKWARD[kind](backend)(grad, saved, tuple(shape_arg), seed, offset, threshold, *bparams, storage)


# The custom ops' list arguments are annotated with typing.List: torch 2.5's schema inference
# accepts no builtin ``list[int]`` (torch 2.6 and later accept both).
@torch.library.custom_op("dropkit::masked_fwd", mutates_args=())
def _forward_op(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, kind: str, shape_arg: List[int],  # noqa: UP006
    threshold: int, params: List[float], storage: str,  # noqa: UP006
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, saved, extra = _forward_body(x, seed, offset, kind, shape_arg, threshold, params, storage)
    return y, saved, torch.tensor(extra, dtype=torch.float64)


@_forward_op.register_fake
def _(x, seed, offset, kind, shape_arg, threshold, params, storage):
    if kind == "dropblock":
        n = x.shape[0] * (1 if params[0] else x.shape[1]) * math.prod(x.shape[2:])
    else:
        n = math.prod(shape_arg)
    return torch.empty_like(x), saved_like(x, n, storage), x.new_empty((), dtype=torch.float64)


@torch.library.custom_op("dropkit::masked_bwd", mutates_args=())
def _backward_op(
    grad: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, saved: torch.Tensor, kind: str,
    shape_arg: List[int], threshold: int, bparams: List[float], extra: torch.Tensor, storage: str,  # noqa: UP006
) -> torch.Tensor:
    return _backward_body(grad, seed, offset, saved, kind, shape_arg, threshold, bparams, extra.item(),
                          storage)


@_backward_op.register_fake
def _(grad, seed, offset, saved, kind, shape_arg, threshold, bparams, extra, storage):
    return torch.empty_like(grad)


def _forward(x, seed, offset, kind, shape_arg, threshold, params, storage):
    if dispatch.compiling():
        return _forward_op(x, *dispatch.as_tensors(seed, offset), kind, list(shape_arg), threshold,
                           [float(v) for v in params], storage)
    return _forward_body(x, seed, offset, kind, shape_arg, threshold, params, storage)


def _grad_map(grad, saved, seed, offset, kind, shape_arg, threshold, bparams, extra, storage):
    if dispatch.compiling():
        if not isinstance(extra, torch.Tensor):
            extra = torch.tensor(float(extra), dtype=torch.float64)
        return _backward_op(grad.contiguous(), *dispatch.as_tensors(seed, offset), saved, kind,
                            list(shape_arg), threshold, [float(v) for v in bparams], extra, storage)
    return _backward_body(grad.contiguous(), seed, offset, saved, kind, shape_arg, threshold, bparams,
                          float(extra), storage)


class _Masked(torch.autograd.Function):
    """One of the kinds above; its backward is the self-adjoint map ``where(keep, c * grad, 0)``."""

    @staticmethod
    def forward(ctx, x, kind, shape_arg, seed, offset, threshold, params, storage):
        y, saved, extra = _forward(x, seed, offset, kind, shape_arg, threshold, params, storage)
        ctx.save_for_backward(saved)
        # (seed, offset, kind, shape_arg, threshold, backward params, DropBlock's scale, storage)
        ctx.args = (seed, offset, kind, shape_arg, threshold, params[:1], extra, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        return (adjoint(grad_y, _grad_map, saved, ctx.args), None, None, None, None, None, None, None)


def _masked(kind, x, shape_arg, seed, offset, threshold, params, storage) -> torch.Tensor:
    if dispatch._tracing_state() is not None:
        dispatch.refuse_tracing()
    args = (x, kind, tuple(shape_arg), seed, offset, threshold, tuple(params), storage)
    if dispatch._functorch_active():
        return _Masked.apply(*args)
    if not dispatch.compiling() and not saves(x):
        # Nothing will be needed for backward, and no graph node either (inference, MC dropout).
        return _forward_body(x, seed, offset, kind, args[2], threshold, args[6], "seed")[0]
    return _masked_apply(*args)


_masked_apply = _torch.function_apply(_Masked)


def bcast_dropout(
    x: torch.Tensor, mask_shape: tuple[int, ...], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """Dropout with a mask of the reduced ``mask_shape`` (each dim 1 or x's), applied to the whole
    ``x`` in one pass, with autograd: ``where(keep[broadcast], x * scale, 0)``. The mask takes
    ``prod(mask_shape)`` words; backward keeps 1 bit per mask entry ("bits") or nothing.

    Example:
        >>> from dropkit.ops import keep_mask
        >>> x = torch.ones(2, 3, 4)
        >>> y = bcast_dropout(x, (2, 3, 1), 5, 0, 2**31, 2.0, "bits")
        >>> keep = keep_mask(6, 5, 0, 2**31, x.device).view(2, 3, 1)
        >>> torch.equal(y, torch.where(keep, x * 2.0, torch.zeros(())))
        True
    """
    if not plain(x, "bcast_dropout"):
        return shape_only(bcast_dropout, x, mask_shape, seed, offset, threshold, scale, storage)
    if storage == "seed" and not dispatch.compiling() and dispatch._tracing_state() is None \
            and not dispatch._functorch_active():
        backend = dispatch.backend_of(x, "bcast_dropout_redraw")
        limit = backend.max_dims
        if backend.bcast_dropout_redraw is not None and backend.position == HOST and (
                limit is None or x.dim() <= limit):
            # The backend draws the mask again for backward and keeps none (see _autograd).
            args = (tuple(mask_shape), *dispatch.position(backend, seed, offset, x.device), threshold, scale)
            return adjoint(x, _redraw_map(backend), None, args) if saves(x) else \
                backend.bcast_dropout_redraw(x, *args)
    return _masked("bcast", x, mask_shape, seed, offset, threshold, (scale,), storage)


def _redraw_map(backend: Backend):
    redraw = backend.bcast_dropout_redraw
    return lambda g, saved, *args: redraw(g, *args)


def alpha(
    x: torch.Tensor, mask_shape: tuple[int, ...], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, a: float, b: float, fill: float, storage: str,
) -> torch.Tensor:
    """Alpha dropout's replacement in one pass, with autograd: ``where(keep, a x + b, fill)``.

    Example:
        >>> x = torch.zeros(64)
        >>> y = alpha(x, (64,), 1, 0, 2**31, 2.0, 0.5, -1.0, "seed")
        >>> sorted(set(y.tolist()))
        [-1.0, 0.5]
    """
    if not plain(x, "alpha"):
        return shape_only(alpha, x, mask_shape, seed, offset, threshold, a, b, fill, storage)
    return _masked("alpha", x, mask_shape, seed, offset, threshold, (a, b, fill), storage)


def drop_block(
    x: torch.Tensor, block_size: tuple[int, ...], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, shared_channels: bool, storage: str,
) -> torch.Tensor:
    """DropBlock on a batched ``x`` (N, C, *spatial) in one pass, with autograd: block mask from
    the seed grid, then ``where(keep, x * count / kept, 0)``; ``block_size`` is clipped already.

    Example:
        >>> y = drop_block(torch.ones(1, 1, 6, 6), (3, 3), 0, 0, 2**30, False, "bits")
        >>> y.shape
        torch.Size([1, 1, 6, 6])
    """
    if not plain(x, "drop_block"):
        return shape_only(torch.clone, x)  # the block mask counts its seeds: data a shape lacks
    return _masked("dropblock", x, block_size, seed, offset, threshold, (bool(shared_channels),), storage)
