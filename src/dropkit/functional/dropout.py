"""Dropout (Srivastava et al., JMLR 2014) on dropkit's random stream.

Every element of the mask's logical shape is kept with probability ``1 - p``; the mask is a
pure function of ``(seed, offset, shape, p)`` as docs/rng.md specifies, so it is the same on
every backend, thread count, memory layout and compile mode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from dropkit import _dtensor, ops
from dropkit.functional._checks import (
    check_dims,
    check_floating,
    check_mask_storage,
    check_mode,
    check_p,
    open_stream,
)
from dropkit.rng import keep_threshold

__all__ = ["dropout", "dropout_mask", "mask_shape", "inverted_scale"]


def mask_shape(shape: Sequence[int], shared_dims: Sequence[int] = ()) -> tuple[int, ...]:
    """The logical shape of the mask: ``shape`` with every dimension in ``shared_dims`` set to 1.

    Example:
        >>> mask_shape((32, 16, 8, 8), shared_dims=(2, 3))
        (32, 16, 1, 1)
    """
    dims = check_dims(shared_dims, len(shape))
    return tuple(1 if d in dims else int(s) for d, s in enumerate(shape))


def inverted_scale(p: float) -> float:
    """``1 / (1 - p)``, with ``p = 1`` mapped to 0 so that no element ever computes ``inf * 0``."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def dropout_mask(
    shape: Sequence[int] | torch.Size, p: float, *, seed: int | torch.Tensor, offset: int | torch.Tensor = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The keep-mask that :func:`dropout` applies for the same ``seed`` and ``offset``.

    Element ``i`` (row-major over ``shape``) is kept iff stream word ``w[i] >= round(p * 2**32)``.

    Args:
        shape: the mask's logical shape.
        p: probability of dropping an element, in [0, 1].
        seed: the stream's 64-bit seed.
        offset: the stream offset, in 4-word blocks.
        device: where to build the mask.

    Shape:
        Output: ``shape``, dtype bool (True = kept).

    Example:
        >>> m = dropout_mask((2, 3), 0.5, seed=7)
        >>> m.shape, m.dtype
        (torch.Size([2, 3]), torch.bool)
    """
    p = check_p(p)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    if seed is None:
        raise ValueError("dropout_mask needs an explicit seed")
    device = torch.device(device) if device is not None else torch.device("cpu")
    numel = math.prod(shape)
    seed, offset = open_stream(seed, offset, None, device).take(numel)
    return ops.keep_mask(numel, seed, offset, keep_threshold(p), device).view(shape)


def evaluation(input: torch.Tensor, p: float, mode: str, inplace: bool) -> torch.Tensor:
    """Dropout's rule outside training: ``x`` (inverted) or ``(1 - p) x`` (classic)."""
    if mode == "inverted" or p == 0.0:
        return input
    return input.mul_(1.0 - p) if inplace else input * (1.0 - p)


@functools.lru_cache(maxsize=1024)
def _reduced(shape: torch.Size, dims: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The mask shape over ``shape`` with the (normalized) ``dims`` shared, and its size."""
    reduced = tuple(1 if d in dims else s for d, s in enumerate(shape))
    return reduced, math.prod(reduced)


def apply_dropout(
    input: torch.Tensor, threshold: int, scale: float, dims: tuple[int, ...], stream: object,
    mask_storage: str, inplace: bool,
) -> torch.Tensor:
    """Draw the keep-mask from ``stream`` and apply it: ``where(keep, x * scale, 0)``.

    The unchecked core of :func:`dropout` that modules call with their own stream: ``dims`` are
    the (normalized) shared dims, ``threshold`` is ``round(p * 2**32)``. It reserves exactly
    the mask's words, ``prod(mask_shape(input.shape, dims))``.
    """
    if _dtensor.routes(input):
        return _dtensor.apply_dropout(input, threshold, scale, dims, stream, inplace)  # its block of the mask
    if dims:
        shape, numel = _reduced(input.shape, dims)
        if numel != input.numel():
            # One pass over the full tensor with the reduced mask; backward keeps its bits.
            seed, offset = stream.take(numel)
            y = ops.bcast_dropout(input, shape, seed, offset, threshold, scale, mask_storage)
            return input.copy_(y) if inplace else y
    seed, offset = stream.take(input.numel())
    if not (input.requires_grad and torch.is_grad_enabled()):
        mask_storage = "seed"  # nothing will be needed for backward
    if input.is_contiguous():
        y = ops.dropout(input, seed, offset, threshold, scale, mask_storage)
    else:
        y = ops.dropout(input.contiguous(), seed, offset, threshold, scale, mask_storage)
        y = torch.empty_like(input).copy_(y)
    return input.copy_(y) if inplace else y


def dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    mode: str = "inverted", shared_dims: Sequence[int] = (), seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0, generator: torch.Generator | None = None, mask_storage: str = "bits",
) -> torch.Tensor:
    r"""Randomly zero elements of ``input`` with probability ``p``.

    With ``m`` the keep-mask (``m_i = 1`` with probability ``1 - p``):

    * ``mode="inverted"`` (PyTorch's): training ``y = x * m / (1 - p)``, evaluation ``y = x``.
    * ``mode="classic"`` (Srivastava et al. 2014): training ``y = x * m``, evaluation
      ``y = (1 - p) * x``.

    Both keep the expected output of training equal to the evaluation output. Dropped elements
    are exactly 0 even where ``x`` is NaN or inf. ``p = 0`` returns ``input`` and consumes no
    random words; ``p = 1`` returns zeros (with zero gradients, never NaN).

    Args:
        input: a floating-point tensor of any shape.
        p: probability of dropping an element, in [0, 1].
        training: apply dropout if True; otherwise the evaluation rule of ``mode``.
        inplace: write the result into ``input``.
        mode: "inverted" or "classic".
        shared_dims: dimensions along which one mask value is shared (``(0,)``: one mask for the
            whole batch). The mask is drawn over the reduced shape and broadcast.
        seed: the stream's 64-bit seed; None draws a fresh one from ``generator`` (torch's
            default generator if None), so ``torch.manual_seed`` makes runs reproducible.
        offset: the stream offset, in 4-word blocks.
        generator: the generator seeds are drawn from when ``seed`` is None.
        mask_storage: what is saved for backward: "bits" (1 bit per element), "seed" (nothing;
            the mask is regenerated) or "bool" (1 byte per element, for debugging).

    Shape:
        Input: ``(*)``, any shape. Output: ``(*)``, same shape, dtype and memory layout.

    Examples:
        >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        >>> y = dropout(x, 0.4, seed=0)
        >>> keep = dropout_mask(x.shape, 0.4, seed=0)
        >>> torch.equal(y, torch.where(keep, x / 0.6, torch.zeros(())))
        True
        >>> dropout(x, 0.4, training=False, mode="classic")
        tensor([0.6000, 1.2000, 1.8000, 2.4000, 3.0000])
    """
    check_floating(input)
    p = check_p(p)
    mode = check_mode(mode)
    mask_storage = check_mask_storage(mask_storage)
    dims = check_dims(shared_dims, input.dim()) if shared_dims else ()
    stream = open_stream(seed, offset, generator, input.device)
    if not training:
        return evaluation(input, p, mode, inplace)
    if p == 0.0:
        return input
    scale = inverted_scale(p) if mode == "inverted" else 1.0
    return apply_dropout(input, keep_threshold(p), scale, dims, stream, mask_storage, inplace)
