"""Gaussian dropout and Gaussian noise: the normals drawn and applied in one kernel pass, and the
one autograd definition of both.

``y = x * (1 + c * z)`` (multiplicative: Gaussian dropout) or ``y = x + c * z`` (additive:
Gaussian noise), ``z`` normal ``i`` of the stream for element ``i``. Nothing full-size is saved
for backward: the multiplicative gradient ``grad * (1 + c * z)`` regenerates ``z`` from
``(seed, offset)`` (the map is linear in ``x`` and its own adjoint), and the additive gradient
is the incoming one.
"""

from __future__ import annotations

import torch

from dropkit import _torch
from dropkit.ops._autograd import adjoint, run
from dropkit.ops._dispatch import _functorch_active, _tracing_state, backend_of, position, refuse_tracing
from dropkit.ops._inputs import plain, shape_only


def _body(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, c: float, additive: bool
) -> torch.Tensor:
    backend = backend_of(x, "gaussian_apply")
    return backend.gaussian_apply(x, *position(backend, seed, offset, x.device), c, additive)


_op = torch.library.custom_op("dropkit::gaussian_apply", _body, mutates_args=())


@_op.register_fake
def _(x, seed, offset, c, additive):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _multiply(x, saved, seed, offset, c):
    """The multiplicative map ``x * (1 + c z)``: the forward, and the backward of the gradient."""
    return run(_body, _op, x.contiguous(), seed, offset, c, False)


class _Gaussian(torch.autograd.Function):
    """``x * (1 + c z)`` or ``x + c z``."""

    @staticmethod
    def forward(ctx, x, seed, offset, c, additive):
        ctx.args = (seed, offset, c)
        ctx.additive = additive
        return run(_body, _op, x.contiguous(), seed, offset, c, additive)

    @staticmethod
    def backward(ctx, grad_y):
        if ctx.additive:
            return grad_y, None, None, None, None
        return adjoint(grad_y, _multiply, None, ctx.args), None, None, None, None


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
