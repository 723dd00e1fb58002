"""Gaussian dropout and Gaussian noise: the normals drawn and applied in one kernel pass, and the
one autograd definition of both.

``y = x * (1 + c * z)`` (multiplicative: Gaussian dropout) or ``y = x + c * z`` (additive:
Gaussian noise), ``z`` normal ``i`` of the stream for element ``i``. Nothing full-size is saved
for backward: the multiplicative gradient ``grad * (1 + c * z)`` regenerates ``z`` from
``(seed, offset)``, and the additive gradient is the incoming one.
"""

from __future__ import annotations

from types import ModuleType

import torch

from dropkit import _torch
from dropkit.backends import reference
from dropkit.ops._dispatch import (
    _as_tensor,
    _functorch_active,
    _position,
    _tracing_state,
    backend_for,
    compiling,
    refuse_tracing,
)
from dropkit.ops._inputs import plain, shape_only


def _backend(x: torch.Tensor) -> ModuleType:
    backend = backend_for(x.device, x.dtype)
    return backend if hasattr(backend, "gaussian_apply") else reference


@torch.library.custom_op("dropkit::gaussian_apply", mutates_args=())
def _gaussian_op(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, c: float, additive: bool
) -> torch.Tensor:
    backend = _backend(x)
    return backend.gaussian_apply(x, *_position(backend, seed, offset, x.device), c, additive)


@_gaussian_op.register_fake
def _(x, seed, offset, c, additive):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _apply(x, seed, offset, c, additive):
    if compiling():
        return _gaussian_op(x, _as_tensor(seed), _as_tensor(offset), c, additive)
    backend = _backend(x)
    return backend.gaussian_apply(x, *_position(backend, seed, offset, x.device), c, additive)


class _Gaussian(torch.autograd.Function):
    """``x * (1 + c z)`` or ``x + c z``. The multiplicative map is linear in ``x``, so its
    backward is the same map of the gradient (and that map's backward is itself again)."""

    @staticmethod
    def forward(ctx, x, seed, offset, c, additive):
        ctx.args = (seed, offset, c)
        ctx.additive = additive
        return _apply(x.contiguous(), seed, offset, c, additive)

    @staticmethod
    def backward(ctx, grad_y):
        if ctx.additive:
            return grad_y, None, None, None, None
        seed, offset, c = ctx.args
        grad_y = grad_y.contiguous()
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable too
            grad_x = _Gaussian.apply(grad_y, seed, offset, c, False)
        else:
            grad_x = _apply(grad_y, seed, offset, c, False)
        return grad_x, None, None, None, None


_gaussian_apply = _torch.function_apply(_Gaussian)


def gaussian(
    x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, c: float, additive: bool
) -> torch.Tensor:
    """Gaussian noise on ``x`` with autograd: ``x + c * z`` if ``additive``, else ``x * (1 + c * z)``.

    ``z`` is normal ``i`` of the stream ``(seed, offset)`` for element ``i`` of ``x`` (row-major;
    ``2 * ceil(numel / 2)`` words, docs/rng.md "Normal numbers"), drawn inside the kernel in the
    compute dtype (float64 for float64, else float32); ``c`` and each product and sum are rounded
    in that dtype and the result once to ``x``'s dtype. The gradient is ``grad * (1 + c * z)``
    (``z`` regenerated, nothing saved) or ``grad``.

    Shape:
        x: ``(*)``; output: same shape, contiguous.

    Example:
        >>> from dropkit.ops import normal
        >>> x = torch.full((5,), 2.0)
        >>> z = normal(5, 7, 0, torch.float32, x.device)
        >>> torch.equal(gaussian(x, 7, 0, 0.5, True), x + torch.tensor(0.5) * z)
        True
    """
    if _tracing_state() is not None:
        refuse_tracing()
    if not plain(x, "gaussian"):
        return shape_only(torch.clone, x)  # the normals' reference rounding reads values
    if _functorch_active():
        return _Gaussian.apply(x, seed, offset, c, additive)
    return _gaussian_apply(x, seed, offset, c, additive)
