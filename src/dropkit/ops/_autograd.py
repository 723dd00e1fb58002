"""The autograd that every op of the family shares: one body per op kind run eagerly or as the
custom op torch.compile sees, and the self-adjoint backward written once.

**One body.** Each op kind has one function that picks the backend and calls its kernel. Eager
code calls it directly; under torch.compile the same function, registered as a custom op
(opaque to the compiler, with a fake kernel for shapes), is called with the position as tensors
(:func:`run`), so the compiled graph neither bakes in a mask nor recompiles per step. The
custom-op dispatcher is skipped in eager mode because it costs more per call than the whole
kernel on the small tensors of an MLP.

**Self-adjoint backward.** Every backward of the family is a map ``g -> where(keep, g * c, 0)``
(or ``g * (1 + c z)``) with a fixed mask: linear in ``g`` and its own adjoint. Its backward is
therefore the same map again, so :class:`SelfAdjoint` gives every order of derivative; an op's
backward calls :func:`adjoint`, which goes through it only when a graph is being built
(``create_graph=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dropkit import _torch
from dropkit.ops._dispatch import _functorch_active, as_tensors, compiling

__all__ = ["run", "SelfAdjoint", "adjoint", "saves"]


def run(body: Callable, op: Callable, x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor,
        *args: object) -> object:
    """``body(x, seed, offset, *args)``; under torch.compile the custom op ``op`` registered from
    ``body``, with the position as tensors.

    Example:
        >>> run(lambda x, s, o: x + s, None, torch.zeros(2), 1, 0).tolist()
        [1.0, 1.0]
    """
    if compiling():
        return op(x, *as_tensors(seed, offset), *args)
    return body(x, seed, offset, *args)


def saves(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` builds a graph node: otherwise nothing is saved for backward
    (the storage is "seed", whatever was asked) and no autograd Function runs.

    Example:
        >>> saves(torch.ones(2, requires_grad=True)), saves(torch.ones(2))
        (True, False)
    """
    return x.requires_grad and torch.is_grad_enabled()


class SelfAdjoint(torch.autograd.Function):
    """``y = fn(x, saved, *args)`` for a map ``fn`` linear in ``x`` and its own adjoint: the
    backward is ``fn`` of the gradient, through this Function again."""

    @staticmethod
    def forward(ctx, x, fn, saved, args):
        ctx.fn, ctx.args = fn, args
        ctx.save_for_backward(saved)
        return fn(x, saved, *args)

    @staticmethod
    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        return adjoint(grad, ctx.fn, saved, ctx.args), None, None, None


def adjoint(grad: torch.Tensor, fn: Callable, saved: torch.Tensor | None, args: tuple) -> torch.Tensor:
    """``fn(grad, saved, *args)``, differentiable (through :class:`SelfAdjoint`) when the
    backward itself is being recorded (``create_graph=True``).

    Example:
        >>> double = lambda g, saved: g * 2
        >>> x = torch.ones(3, requires_grad=True)
        >>> adjoint(x, double, None, ()).sum().backward(); x.grad.tolist()
        [2.0, 2.0, 2.0]
    """
    if torch.is_grad_enabled():
        if _functorch_active():
            return SelfAdjoint.apply(grad, fn, saved, args)
        return _self_adjoint_apply(grad, fn, saved, args)  # the C entry: no Python argument binding
    return fn(grad, saved, *args)


_self_adjoint_apply = _torch.function_apply(SelfAdjoint)
