"""Stream-drawn uniforms and normals, and small helpers shared by the dropout family.

Masks go through :func:`dropkit.ops.keep_mask` (the backend-dispatched op). Continuous noise
(Gaussian dropout, Gaussian noise, the relaxed Bernoulli of Concrete dropout) is derived here
from :func:`dropkit.rng.philox_words`, the pure-torch reference generator: the fused native
kernel covers plain and shared-dims dropout only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from dropkit.backends.reference import opmath_dtype
from dropkit.functional._checks import stream_tensors
from dropkit.rng import philox_words, signed_to_seed, words_to_uniform

__all__ = [
    "normal_words",
    "stream_uniform",
    "stream_normal",
    "zeros_with_grad",
    "check_rank",
    "check_positive_ints",
]


def _position(
    seed: int | torch.Tensor | None, offset: int | torch.Tensor, generator: torch.Generator | None
) -> tuple[int, int]:
    seed_t, offset_t = stream_tensors(seed, offset, generator)
    return signed_to_seed(int(seed_t.item())), signed_to_seed(int(offset_t.item()))


def stream_uniform(
    n: int,
    *,
    seed: int | torch.Tensor | None,
    offset: int | torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` uniforms in (0, 1): element ``i`` is ``((w[i] >> 8) + 0.5) * 2**-24`` (n words)."""
    s, o = _position(seed, offset, generator)
    return words_to_uniform(philox_words(s, o, n, device=device), dtype)


def normal_words(n: int) -> int:
    """Stream words that :func:`stream_normal` uses for ``n`` normals: ``2 * ceil(n / 2)``."""
    return 2 * ((n + 1) // 2)


def stream_normal(
    n: int,
    *,
    seed: int | torch.Tensor | None,
    offset: int | torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` standard normals by the Box-Muller transform of stream uniforms.

    Pair ``k`` takes ``u1 = U(w[2k])`` and ``u2 = U(w[2k + 1])`` and gives
    ``z[2k] = sqrt(-2 ln u1) cos(2 pi u2)`` and ``z[2k + 1] = sqrt(-2 ln u1) sin(2 pi u2)``;
    the call uses ``2 * ceil(n / 2)`` words, i.e. ``ceil(n / 2) / 2`` blocks rounded up. The
    uniforms lie in the open interval (0, 1), so the logarithm is always finite.
    """
    u = stream_uniform(
        normal_words(n), seed=seed, offset=offset, generator=generator, device=device, dtype=torch.float64
    ).view(-1, 2)
    r = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    angle = (2.0 * math.pi) * u[:, 1]
    z = torch.stack((r * torch.cos(angle), r * torch.sin(angle)), dim=1).reshape(-1)[:n]
    return z.to(dtype)


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
    return opmath_dtype(x.dtype)
