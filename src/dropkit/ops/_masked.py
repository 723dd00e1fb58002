"""Masks with broadcast dims, alpha dropout and DropBlock: one pass over the full tensor."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import torch

from dropkit import _torch
from dropkit.backends import reference
from dropkit.ops._dispatch import (
    _as_tensor,
    _forced_name,
    _functorch_active,
    _position,
    _tracing_state,
    backend_for,
    compiling,
    host_backend,
    refuse_tracing,
)
from dropkit.ops._inputs import plain, shape_only

# ---- Masks with broadcast dims, alpha dropout, DropBlock: one pass over the full tensor ----
#
# Each is a pair of backend functions (forward -> (y, saved[, scale]), backward -> grad_in) over a
# mask of a reduced shape; the pairs differ only in their parameters:
#   "bcast":     where(keep, x * scale, 0)        params (scale,)           backward params (scale,)
#   "alpha":     where(keep, a x + b, fill)       params (a, b, fill)       backward params (a,)
#   "dropblock": where(keep, x * count/kept, 0)   params (shared_channels,) backward params (shared, scale)
# ``shape_arg`` is the reduced mask shape ("bcast", "alpha") or the block size ("dropblock").
_MASKED = {
    "bcast": ("bcast_dropout_forward", "bcast_dropout_backward"),
    "alpha": ("alpha_forward", "alpha_backward"),
    "dropblock": ("dropblock_forward", "dropblock_backward"),
}


def _masked_backend(kind: str, x: torch.Tensor) -> ModuleType:
    key = (kind, x.device.type, x.dtype, _forced_name())
    backend = _routes.get(key)
    if backend is None:
        backend = backend_for(x.device, x.dtype)
        if not hasattr(backend, _MASKED[kind][0]):
            backend = reference
        _routes[key] = backend
    supports = getattr(backend, "supports_layout", None)
    return reference if supports is not None and not supports(x, tuple(x.shape)) else backend


# (kind, device type, dtype, forced backend) -> the backend with that kind's functions.
_routes: dict[tuple, ModuleType] = {}


def _masked_forward(kind, x, shape_arg, seed, offset, threshold, params, storage, backend=None):
    """``(y, saved, extra)`` from the backend; ``extra`` is DropBlock's scale (else 0.0)."""
    if backend is None:
        backend = _masked_backend(kind, x)
    seed, offset = _position(backend, seed, offset, x.device)
    out = getattr(backend, _MASKED[kind][0])(x, shape_arg, seed, offset, threshold, *params, storage)
    return out[0], out[1], (out[2] if len(out) > 2 else 0.0)


def _bwd_params(kind: str, params: tuple) -> tuple:
    return params[:1]  # bcast: (scale,); alpha: (a,); dropblock: (shared_channels,)


def _masked_backward(kind, grad, saved, shape_arg, seed, offset, threshold, bparams, extra, storage,
                     backend=None):
    if backend is None:
        backend = _masked_backend(kind, grad)
    seed, offset = _position(backend, seed, offset, grad.device)
    if kind == "dropblock":
        bparams = (bool(bparams[0]), float(extra))
    backward = getattr(backend, _MASKED[kind][1])
    return backward(grad, saved, shape_arg, seed, offset, threshold, *bparams, storage)


@torch.library.custom_op("dropkit::masked_fwd", mutates_args=())
def _masked_fwd_op(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, kind: str, shape_arg: list[int],
    threshold: int, params: list[float], storage: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if kind == "dropblock":
        params = [bool(params[0])]
    shape = tuple(shape_arg)
    y, saved, extra = _masked_forward(kind, x, shape, seed, offset, threshold, tuple(params), storage)
    return y, saved, torch.tensor(extra, dtype=torch.float64)


@_masked_fwd_op.register_fake
def _(x, seed, offset, kind, shape_arg, threshold, params, storage):
    if kind == "dropblock":
        n = x.shape[0] * (1 if params[0] else x.shape[1]) * math.prod(x.shape[2:])
    else:
        n = math.prod(shape_arg)
    size = {"bits": (n + 7) // 8, "bool": n}.get(storage, 0)
    saved = x.new_empty((size,), dtype=torch.bool if storage == "bool" else torch.uint8)
    return torch.empty_like(x), saved, x.new_empty((), dtype=torch.float64)


@torch.library.custom_op("dropkit::masked_bwd", mutates_args=())
def _masked_bwd_op(
    grad: torch.Tensor, saved: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, kind: str,
    shape_arg: list[int], threshold: int, bparams: list[float], extra: torch.Tensor, storage: str,
) -> torch.Tensor:
    return _masked_backward(kind, grad, saved, tuple(shape_arg), seed, offset, threshold, tuple(bparams),
                            extra.item(), storage)


@_masked_bwd_op.register_fake
def _(grad, saved, seed, offset, kind, shape_arg, threshold, bparams, extra, storage):
    return torch.empty_like(grad)


def _run_masked_fwd(kind, x, shape_arg, seed, offset, threshold, params, storage, backend=None):
    if compiling():
        return _masked_fwd_op(x, _as_tensor(seed), _as_tensor(offset), kind, list(shape_arg), threshold,
                              [float(v) for v in params], storage)
    return _masked_forward(kind, x, shape_arg, seed, offset, threshold, params, storage, backend)


def _run_masked_bwd(kind, grad, saved, shape_arg, seed, offset, threshold, bparams, extra, storage):
    if compiling():
        if not isinstance(extra, torch.Tensor):
            extra = torch.tensor(float(extra), dtype=torch.float64)
        return _masked_bwd_op(grad, saved, _as_tensor(seed), _as_tensor(offset), kind, list(shape_arg),
                              threshold, [float(v) for v in bparams], extra, storage)
    return _masked_backward(kind, grad, saved, shape_arg, seed, offset, threshold, bparams, extra, storage)


class _MaskedGrad(torch.autograd.Function):
    """The backward map ``where(keep, c * grad, 0)``: linear with the same mask, its own adjoint."""

    @staticmethod
    def forward(ctx, grad, saved, args):
        ctx.save_for_backward(saved)
        ctx.args = args
        return _run_masked_bwd(args[0], grad, saved, *args[1:])

    @staticmethod
    def backward(ctx, gg):
        (saved,) = ctx.saved_tensors
        return _MaskedGrad.apply(gg.contiguous(), saved, ctx.args), None, None


class _Masked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, shape_arg, seed, offset, threshold, params, storage, backend=None):
        if backend is None:  # under torch.compile or functorch: the general route
            y, saved, extra = _run_masked_fwd(kind, x, shape_arg, seed, offset, threshold, params, storage)
        else:  # eager, the backend chosen by _masked
            y, saved, extra = _masked_forward(kind, x, shape_arg, seed, offset, threshold, params, storage,
                                              backend)
        ctx.backend = backend
        ctx.save_for_backward(saved)
        # (kind, shape_arg, seed, offset, threshold, backward params, DropBlock's scale, storage)
        ctx.args = (kind, shape_arg, seed, offset, threshold, _bwd_params(kind, params), extra, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        if torch.is_grad_enabled():
            grad_x = _MaskedGrad.apply(grad_y, saved, ctx.args)
        elif ctx.backend is not None:  # eager: the forward's backend (grad has x's device and dtype)
            grad_x = _masked_backward(ctx.args[0], grad_y, saved, *ctx.args[1:], backend=ctx.backend)
        else:
            grad_x = _run_masked_bwd(ctx.args[0], grad_y, saved, *ctx.args[1:])
        return grad_x, None, None, None, None, None, None, None, None


def _masked(kind, x, shape_arg, seed, offset, threshold, params, storage) -> torch.Tensor:
    if _tracing_state() is not None:
        refuse_tracing()
    if _functorch_active():
        return _Masked.apply(x, kind, tuple(shape_arg), seed, offset, threshold, tuple(params), storage)
    if compiling():
        return _masked_apply(x, kind, tuple(shape_arg), seed, offset, threshold, tuple(params), storage)
    backend = _masked_backend(kind, x)
    if not (x.requires_grad and torch.is_grad_enabled()):
        # Nothing will be needed for backward, and no graph node either (inference, MC dropout).
        return _masked_forward(kind, x, tuple(shape_arg), seed, offset, threshold, tuple(params), "seed",
                               backend)[0]
    return _masked_apply(x, kind, tuple(shape_arg), seed, offset, threshold, tuple(params), storage, backend)


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
    if storage == "seed" and x.dim() <= 8 and not compiling() and _tracing_state() is None \
            and not _functorch_active():
        redraw = _redraw_for(x)
        if redraw is not None:
            if type(seed) is not int or type(offset) is not int:
                seed, offset = _position(reference, seed, offset, x.device)  # host ints
            args = (tuple(mask_shape), seed, offset, threshold, scale)
            if x.requires_grad and torch.is_grad_enabled():
                return _redraw_apply(x, redraw, args)
            return redraw(x, *args)
    return _masked("bcast", x, mask_shape, seed, offset, threshold, (scale,), storage)


def _redraw_for(x: torch.Tensor) -> Callable | None:
    """The backend's ``bcast_dropout_redraw`` for ``x`` if it has one and reads host positions."""
    backend = host_backend(x.device.type, x.dtype)
    return None if backend is None else getattr(backend, "bcast_dropout_redraw", None)


class _Redraw(torch.autograd.Function):
    """A shared-mask product whose backend draws the mask again for backward and keeps none:
    ``where(keep, g * scale, 0)`` is linear and its own adjoint, so backward is the same call."""

    @staticmethod
    def forward(ctx, x, redraw, args):
        ctx.redraw, ctx.args = redraw, args
        return redraw(x, *args)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # double backward: the same linear map again, with autograd
            return _Redraw.apply(grad, ctx.redraw, ctx.args), None, None
        return ctx.redraw(grad, *ctx.args), None, None


_redraw_apply = _torch.function_apply(_Redraw)


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
