"""Dropout of a contiguous tensor: one body for forward and one for backward (eager, or as the
custom ops torch.compile sees), and the one autograd Function."""

from __future__ import annotations

import torch

from dropkit import _torch
from dropkit.backends._shared import saved_like
from dropkit.backends.contract import HOST
from dropkit.ops._autograd import adjoint, run
from dropkit.ops._dispatch import (
    _functorch_active,
    _tracing_state,
    as_tensors,
    backend_of,
    compiling,
    position,
    refuse_tracing,
)
from dropkit.ops._inputs import plain, shape_only


def _forward_body(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, threshold: int, scale: float, storage: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(where(keep, x * scale, 0), saved)`` from the backend that runs ``x``."""
    backend = backend_of(x, "dropout_forward")
    if backend.position != HOST or type(seed) is not int or type(offset) is not int:
        seed, offset = position(backend, seed, offset, x.device)
    return backend.dropout_forward(x, seed, offset, threshold, scale, storage)


def _backward_body(
    grad: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, saved: torch.Tensor, threshold: int,
    scale: float, storage: str,
) -> torch.Tensor:
    """``where(keep, grad * scale, 0)``, the mask from ``saved`` or the stream."""
    backend = backend_of(grad, "dropout_backward")
    if backend.position != HOST or type(seed) is not int or type(offset) is not int:
        seed, offset = position(backend, seed, offset, grad.device)
    return backend.dropout_backward(grad, saved, seed, offset, threshold, scale, storage)


_forward_op = torch.library.custom_op("dropkit::dropout_fwd", _forward_body, mutates_args=())
_backward_op = torch.library.custom_op("dropkit::dropout_bwd", _backward_body, mutates_args=())


@_forward_op.register_fake
def _(x, seed, offset, threshold, scale, storage):
    return torch.empty_like(x, memory_format=torch.contiguous_format), saved_like(x, x.numel(), storage)


@_backward_op.register_fake
def _(grad, seed, offset, saved, threshold, scale, storage):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _grad_map(grad, saved, seed, offset, threshold, scale, storage):
    grad = grad.contiguous()
    return run(_backward_body, _backward_op, grad, seed, offset, saved, threshold, scale, storage)


class _Dropout(torch.autograd.Function):
    """``y = where(keep, x * scale, 0)``; its backward is the same map of the gradient."""

    @staticmethod
    def forward(ctx, x, seed, offset, threshold, scale, storage):
        # Host positions (ints) only exist in eager code: no compile check on the hot CPU path.
        if type(seed) is int and type(offset) is int or not compiling():
            y, saved = _forward_body(x, seed, offset, threshold, scale, storage)
        else:
            y, saved = _forward_op(x, *as_tensors(seed, offset), threshold, scale, storage)
        ctx.save_for_backward(saved)
        ctx.args = (seed, offset, threshold, scale, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        seed, offset, threshold, scale, storage = ctx.args
        if type(seed) is int and type(offset) is int and not torch.is_grad_enabled():
            # Host positions, no graph of the backward: _grad_map's eager case written out (the
            # per-call path of CPU training).
            grad_x = _backward_body(grad_y.contiguous(), seed, offset, saved, threshold, scale, storage)
        else:
            grad_x = adjoint(grad_y, _grad_map, saved, ctx.args)
        return grad_x, None, None, None, None, None


def dropout(
    x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, scale: float,
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
        return _Dropout.apply(x, seed, offset, threshold, scale, storage)
    return _dropout_apply(x, seed, offset, threshold, scale, storage)


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
    return run(_forward_body, _forward_op, x, seed, offset, threshold, scale, storage)


def dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``where(keep, grad * scale, 0)`` with the mask from ``saved`` (or the stream), no autograd."""
    if not plain(grad, "dropout_backward"):
        return shape_only(dropout_backward, grad, saved, seed, offset, threshold, scale, storage)
    return run(_backward_body, _backward_op, grad, seed, offset, saved, threshold, scale, storage)
