"""Stream-drawn uniforms, and small helpers shared by the dropout family.

Every draw goes through :mod:`dropkit.ops` (which picks the backend): the function that draws
reserves exactly its words from the stream it was handed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from dropkit import ops

__all__ = [
    "draw_uniform",
    "zeros_with_grad",
    "check_rank",
    "check_positive_ints",
    "opmath",
]


def draw_uniform(stream: object, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``n`` uniforms in (0, 1) from ``n`` words of ``stream``: ``((w[i] >> 8) + 0.5) * 2**-24``.

    Example:
        >>> from dropkit.rng import Stream
        >>> s = Stream(0)
        >>> u = draw_uniform(s, 5, torch.float64, torch.device("cpu"))
        >>> s.words, bool(((u > 0) & (u < 1)).all())
        (5, True)
    """
    seed, offset = stream.take(n)
    return ops.uniform(n, seed, offset, dtype, device)


def zeros_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``x`` that stay in the autograd graph (gradient exactly 0, never NaN).

    ``x * 0`` would turn inf or NaN inputs into NaN; selecting the constant 0 does not.
    """
    return torch.where(torch.zeros((), dtype=torch.bool, device=x.device), x, torch.zeros((), dtype=x.dtype))


def check_rank(x: torch.Tensor, ranks: Sequence[int], layout: str, name: str) -> None:
    """ValueError naming the shape if ``x.dim()`` is not one of ``ranks``."""
    if x.dim() not in ranks:
        raise ValueError(
            f"{name} expects input of shape {layout} (rank {' or '.join(map(str, ranks))}), "
            f"got shape {tuple(x.shape)}"
        )


def check_positive_ints(value: object, n: int, name: str) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of positive ints, returned as an ``n``-tuple."""
    values = (value,) * n if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != n:
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"{name} must be a positive int or {n} positive ints, got {value!r}")
    return tuple(int(v) for v in values)


def opmath(x: torch.Tensor) -> torch.dtype:
    """The dtype the family computes in: float64 for float64 inputs, float32 otherwise."""
    return ops.opmath_dtype(x.dtype)
