"""Multiplicative and additive Gaussian noise on dropkit's stream.

Gaussian dropout (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", JMLR 2014, section 10) multiplies each unit by ``1 + sigma z`` with
``sigma^2 = p / (1 - p)``: the same mean and variance as inverted Bernoulli dropout with drop
rate ``p``. Gaussian noise adds ``stddev * z``. Both are identity outside training.

The normals ``z`` come from the stream by Box-Muller (see :func:`dropkit.ops.normal`):
element ``i`` (row-major) is normal ``i``; pair ``k`` of normals uses words ``2k`` and
``2k + 1``; a call on ``n`` elements uses ``2 * ceil(n / 2)`` words. They are drawn inside the
kernel that applies them (:func:`dropkit.ops.gaussian`): one pass over the tensor, and nothing
full-size kept for backward.
"""

from __future__ import annotations

import math
import numbers

import torch

from dropkit import _dtensor, ops
from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.functional._noise import zeros_with_grad

__all__ = [
    "gaussian_dropout",
    "gaussian_noise",
    "check_stddev",
    "apply_gaussian_dropout",
    "apply_gaussian_noise",
]


def check_stddev(stddev: object) -> float:
    """Return ``stddev`` as a float after checking it is a finite real number >= 0.

    Example:
        >>> check_stddev(1)
        1.0
    """
    if isinstance(stddev, bool) or not isinstance(stddev, numbers.Real) or not math.isfinite(stddev):
        raise ValueError(f"stddev must be a finite real number >= 0, got {stddev!r}")
    if stddev < 0:
        raise ValueError(f"stddev must be >= 0, got {stddev!r}")
    return float(stddev)


def gaussian_dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Multiply each element by Gaussian noise of mean 1 and variance ``p / (1 - p)``.

    ``y = x (1 + sqrt(p / (1 - p)) z)`` with ``z ~ N(0, 1)`` from the stream (Srivastava et
    al. 2014, sec. 10; Keras's GaussianDropout). ``p = 0`` returns ``input`` and draws nothing;
    ``p = 1`` (infinite variance: nothing of the input survives) returns zeros with zero
    gradient.

    Args:
        input: floating-point tensor.
        p: drop rate of the equivalent Bernoulli dropout, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(*)``. Output: same shape.

    Example:
        >>> y = gaussian_dropout(torch.ones(100000), 0.2, seed=0)
        >>> abs(float(y.mean()) - 1) < 0.01 and abs(float(y.var()) - 0.25) < 0.01
        True
    """
    check_floating(input)
    p = check_p(p)
    stream = open_stream(seed, offset, generator, input.device)
    if not training:
        return input
    return apply_gaussian_dropout(input, p, bool(inplace), stream)


def apply_gaussian_dropout(input: torch.Tensor, p: float, inplace: bool, stream: object) -> torch.Tensor:
    """The unchecked core of :func:`gaussian_dropout` in training (normals drawn from ``stream``)."""
    if p == 0.0:
        return input
    if p == 1.0:
        y = zeros_with_grad(input)
    else:
        c = math.sqrt(p / (1.0 - p))
        if _dtensor.routes(input):
            return _dtensor.apply_gaussian(input, c, False, stream, inplace)
        n = input.numel()
        seed, offset = stream.take(2 * ((n + 1) // 2))
        y = ops.gaussian(input, seed, offset, c, False)
    return input.copy_(y) if inplace else y


def gaussian_noise(
    input: torch.Tensor, stddev: float, training: bool = True, inplace: bool = False, *,
    seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Add zero-mean Gaussian noise: ``y = x + stddev * z``, ``z ~ N(0, 1)``, in training only.

    A classic regularizer and data augmentation (Keras's GaussianNoise). ``stddev = 0``
    returns ``input`` and draws nothing.

    Args:
        input: floating-point tensor.
        stddev: standard deviation of the noise, a finite number >= 0.
        training: identity when False.
        inplace: write the result into ``input``.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(*)``. Output: same shape.

    Example:
        >>> y = gaussian_noise(torch.zeros(100000), 0.5, seed=0)
        >>> abs(float(y.std()) - 0.5) < 0.01
        True
    """
    check_floating(input)
    stddev = check_stddev(stddev)
    stream = open_stream(seed, offset, generator, input.device)
    if not training:
        return input
    return apply_gaussian_noise(input, stddev, bool(inplace), stream)


def apply_gaussian_noise(input: torch.Tensor, stddev: float, inplace: bool, stream: object) -> torch.Tensor:
    """The unchecked core of :func:`gaussian_noise` in training (normals drawn from ``stream``)."""
    if stddev == 0.0:
        return input
    if _dtensor.routes(input):
        return _dtensor.apply_gaussian(input, stddev, True, stream, inplace)
    n = input.numel()
    seed, offset = stream.take(2 * ((n + 1) // 2))
    y = ops.gaussian(input, seed, offset, stddev, True)
    return input.copy_(y) if inplace else y
