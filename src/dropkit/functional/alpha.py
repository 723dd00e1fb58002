"""Alpha dropout for self-normalizing networks (Klambauer et al., NeurIPS 2017).

Dropping to 0 breaks the zero-mean / unit-variance fixed point that SELU networks rely on, so
alpha dropout sets dropped units to SELU's negative saturation value ``alpha' = -lambda * alpha``
and then applies the affine map ``a x + b`` that restores mean 0 and variance 1 for
standardized inputs. With keep probability ``q = 1 - p``:

    a = (q + alpha'^2 q (1 - q)) ** -1/2,    b = -a alpha' (1 - q),
    y = a (x m + alpha' (1 - m)) + b.

At ``p = 1`` the limit of ``y`` (every unit dropped) is 0, which is returned with zero gradient.
"""

from __future__ import annotations

import math

import torch

from dropkit import _dtensor, ops
from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.functional._noise import zeros_with_grad
from dropkit.rng import keep_threshold

__all__ = [
    "SELU_ALPHA",
    "SELU_LAMBDA",
    "alpha_dropout",
    "feature_alpha_dropout",
    "alpha_affine",
]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
_ALPHA_PRIME = -SELU_LAMBDA * SELU_ALPHA


def alpha_affine(p: float) -> tuple[float, float, float]:
    """``(a, b, alpha')`` of alpha dropout for drop probability ``p`` in [0, 1).

    Example:
        >>> a, b, alpha_p = alpha_affine(0.0)
        >>> (a, b)
        (1.0, 0.0)
    """
    q = 1.0 - check_p(p)
    if q <= 0.0:
        raise ValueError(f"alpha_affine needs p < 1, got {p!r}")
    a = 1.0 / math.sqrt(q + _ALPHA_PRIME**2 * q * (1.0 - q))
    b = -a * _ALPHA_PRIME * (1.0 - q)
    return a, b + 0.0, _ALPHA_PRIME


def apply_alpha(
    input: torch.Tensor, p: float, inplace: bool, mask_shape: tuple[int, ...], stream: object,
) -> torch.Tensor:
    """The unchecked core of the alpha dropouts: draw the mask over ``mask_shape`` (exactly its
    ``prod(mask_shape)`` words; none for p = 0 or 1) and apply ``a (x m + alpha' (1 - m)) + b``."""
    if p == 0.0:
        return input
    if p == 1.0:
        y = zeros_with_grad(input)
    else:
        a, b, alpha_p = alpha_affine(p)
        fill = a * alpha_p + b
        if _dtensor.routes(input):
            dims = tuple(d for d, n in enumerate(mask_shape) if n == 1 and input.shape[d] != 1)
            return _dtensor.apply_alpha(input, dims, keep_threshold(p), a, b, fill, stream, inplace)
        seed, offset = stream.take(math.prod(mask_shape))
        y = ops.alpha(input, mask_shape, seed, offset, keep_threshold(p), a, b, fill, "bits")
    return input.copy_(y) if inplace else y


def feature_mask_shape(input: torch.Tensor) -> tuple[int, ...]:
    """The mask shape of feature alpha dropout, ``(N, C, 1, ..., 1)``; ValueError below rank 2.

    Example:
        >>> feature_mask_shape(torch.zeros(4, 3, 5))
        (4, 3, 1)
    """
    if input.dim() < 2:
        raise ValueError(
            f"feature_alpha_dropout expects input of shape (N, C, *), got shape {tuple(input.shape)}"
        )
    return tuple(input.shape[:2]) + (1,) * (input.dim() - 2)


def alpha_dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout: drop elements to SELU's saturation value and restore mean 0, variance 1.

    ``y = a (x m + alpha' (1 - m)) + b`` with the keep-mask ``m`` of :func:`dropout_mask`
    (element ``i`` uses stream word ``i``), ``alpha' = -1.7580993``, and ``a``, ``b`` from
    :func:`alpha_affine` (Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017).

    Args:
        input: floating-point tensor.
        p: probability of dropping an element, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(*)``. Output: same shape.

    Example:
        >>> x = torch.randn(10000, generator=torch.Generator().manual_seed(0))
        >>> y = alpha_dropout(x, 0.2, seed=0)
        >>> abs(float(y.mean())) < 0.05 and abs(float(y.var()) - 1) < 0.05
        True
    """
    check_floating(input)
    p = check_p(p)
    stream = open_stream(seed, offset, generator, input.device)
    if not training:
        return input
    return apply_alpha(input, p, inplace, tuple(input.shape), stream)


def feature_alpha_dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout of whole channels: one mask value per (sample, channel).

    The formula of :func:`alpha_dropout` with the mask drawn over ``(N, C, 1, ..., 1)`` (one
    stream word per (sample, channel), row-major) and broadcast over the remaining dims.

    Args:
        input: floating-point tensor, always batched.
        p: probability of dropping a channel, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(N, C, *)`` with at least 2 dims (dim 0 is always N, dim 1 always C; an
        unbatched input needs ``unsqueeze(0)``). Output: same shape.

    Example:
        >>> y = feature_alpha_dropout(torch.randn(4, 3, 5), 0.5, seed=0)
        >>> y.shape
        torch.Size([4, 3, 5])
    """
    check_floating(input)
    p = check_p(p)
    stream = open_stream(seed, offset, generator, input.device)
    shape = feature_mask_shape(input)
    if not training:
        return input
    return apply_alpha(input, p, inplace, shape, stream)
