"""Dropout of a contiguous tensor: the custom ops torch.compile sees, and the one autograd
definition that eager and compiled code share."""

from __future__ import annotations

import torch

from dropkit import _torch
from dropkit.ops._dispatch import (
    _as_tensor,
    _functorch_active,
    _position,
    _tracing_state,
    backend_for,
    compiling,
    host_backend,
    refuse_tracing,
)
from dropkit.ops._inputs import plain, shape_only

# ---- The custom ops: what torch.compile sees. Eager code calls the backends directly. ----


def _saved_like(x: torch.Tensor, storage: str) -> torch.Tensor:
    n = x.numel()
    if storage == "bits":
        return x.new_empty(((n + 7) // 8,), dtype=torch.uint8)
    if storage == "bool":
        return x.new_empty((n,), dtype=torch.bool)
    return x.new_empty((0,), dtype=torch.uint8)


@torch.library.custom_op("dropkit::dropout_fwd", mutates_args=())
def _dropout_fwd_op(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, threshold: int, scale: float, storage: str
) -> tuple[torch.Tensor, torch.Tensor]:
    backend = backend_for(x.device, x.dtype)
    return backend.dropout_forward(x, *_position(backend, seed, offset, x.device), threshold, scale, storage)


@_dropout_fwd_op.register_fake
def _(x, seed, offset, threshold, scale, storage):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _saved_like(x, storage)


@torch.library.custom_op("dropkit::dropout_bwd", mutates_args=())
def _dropout_bwd_op(
    grad: torch.Tensor,
    saved: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    backend = backend_for(grad.device, grad.dtype)
    position = _position(backend, seed, offset, grad.device)
    return backend.dropout_backward(grad, saved, *position, threshold, scale, storage)


@_dropout_bwd_op.register_fake
def _(grad, saved, seed, offset, threshold, scale, storage):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)




# ---- The one autograd definition ----


def _forward(x, seed, offset, threshold, scale, storage):
    if compiling():
        return _dropout_fwd_op(x, _as_tensor(seed), _as_tensor(offset), threshold, scale, storage)
    backend = backend_for(x.device, x.dtype)
    return backend.dropout_forward(x, *_position(backend, seed, offset, x.device), threshold, scale, storage)


def _backward(grad, saved, seed, offset, threshold, scale, storage):
    if compiling():
        return _dropout_bwd_op(grad, saved, _as_tensor(seed), _as_tensor(offset), threshold, scale, storage)
    backend = backend_for(grad.device, grad.dtype)
    position = _position(backend, seed, offset, grad.device)
    return backend.dropout_backward(grad, saved, *position, threshold, scale, storage)




class _Dropout(torch.autograd.Function):
    """``y = where(keep, x * scale, 0)``; its backward is the same map of the gradient (linear,
    with the same mask), so the backward's own backward is itself: higher orders come free."""

    @staticmethod
    def forward(ctx, x, saved, seed, offset, threshold, scale, storage):
        # Host positions (ints) only exist in eager code: the hot CPU path skips the dispatch.
        backend = host_backend(x.device.type, x.dtype) if type(seed) is int and type(offset) is int else None
        if saved is None:
            if backend is not None:
                y, saved = backend.dropout_forward(x, seed, offset, threshold, scale, storage)
            else:
                y, saved = _forward(x, seed, offset, threshold, scale, storage)
        else:  # applying the backward map: x is a gradient
            y = _backward(x, saved, seed, offset, threshold, scale, storage)
        ctx.save_for_backward(saved)
        ctx.args = (seed, offset, threshold, scale, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable too
            grad_x = _Dropout.apply(grad_y, saved, *ctx.args)
        else:
            seed, offset, threshold, scale, storage = ctx.args
            host = type(seed) is int and type(offset) is int
            backend = host_backend(grad_y.device.type, grad_y.dtype) if host else None
            if backend is not None:
                grad_x = backend.dropout_backward(grad_y, saved, seed, offset, threshold, scale, storage)
            else:
                grad_x = _backward(grad_y, saved, seed, offset, threshold, scale, storage)
        return grad_x, None, None, None, None, None, None


def dropout(
    x: torch.Tensor,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """Dropout of a contiguous ``x`` with autograd: ``where(keep, x * scale, 0)``.

    ``keep`` is the philox-v1 mask of ``x.numel()`` words at ``(seed, offset)`` and ``threshold``
    (docs/rng.md); ``storage`` says what backward reads ("bits", "seed" or "bool").

    Example:
        >>> from dropkit.ops import keep_mask
        >>> x = torch.ones(6)
        >>> torch.equal(dropout(x, 1, 0, 2**31, 2.0, "bits"), keep_mask(6, 1, 0, 2**31, x.device) * 2.0)
        True
    """
    if _tracing_state() is not None:
        refuse_tracing()
    if not plain(x, "dropout"):
        return shape_only(dropout, x, seed, offset, threshold, scale, storage)
    if _functorch_active():
        return _Dropout.apply(x, None, seed, offset, threshold, scale, storage)
    return _dropout_apply(x, None, seed, offset, threshold, scale, storage)


_dropout_apply = _torch.function_apply(_Dropout)


def dropout_forward(
    x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(where(keep, x * scale, 0), saved)`` of a contiguous ``x``, without autograd: for
    autograd Functions of their own (attention) that need the saved mask back.

    Example:
        >>> y, bits = dropout_forward(torch.ones(8), 1, 0, 2**31, 2.0, "bits")
        >>> torch.equal(dropout_backward(torch.ones(8), bits, 1, 0, 2**31, 2.0, "bits"), y)
        True
    """
    if not plain(x, "dropout_forward"):
        return shape_only(dropout_forward, x, seed, offset, threshold, scale, storage)
    return _forward(x, seed, offset, threshold, scale, storage)


def dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``where(keep, grad * scale, 0)`` with the mask from ``saved`` (or the stream), no autograd."""
    if not plain(grad, "dropout_backward"):
        return shape_only(dropout_backward, grad, saved, seed, offset, threshold, scale, storage)
    return _backward(grad, saved, seed, offset, threshold, scale, storage)
