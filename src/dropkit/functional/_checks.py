"""Argument checks shared by every dropout-family function and layer."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from dropkit.ops import MASK_STORAGES

# The stream's own checks and open_stream live with the streams; imported here for the
# functions and layers that check their arguments through this module.
from dropkit.rng import check_generator, check_position, open_stream  # noqa: F401

MODES = ("inverted", "classic")


def check_p(p: object, name: str = "p", *, open_interval: bool = False) -> float:
    """Return ``p`` as a float after checking it is a real number in [0, 1] (or (0, 1)).

    Raises:
        ValueError: naming the value, if ``p`` is not a real number, is NaN, or is out of range.
    """
    if type(p) is float and not open_interval and 0.0 <= p <= 1.0:  # common case, no ABC lookups
        return p
    if isinstance(p, torch.Tensor) and p.numel() == 1 and not p.requires_grad:
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ValueError(f"{name} must be a real number in [0, 1], got {p!r} of type {type(p).__name__}")
    value = float(p)
    if math.isnan(value):
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if open_interval and not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a probability in the open interval (0, 1), got {p!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return value


def check_floating(x: object, name: str = "input") -> torch.Tensor:
    """Check that ``x`` is a dense (strided) floating-point tensor (TypeError otherwise)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {x.layout}; call .to_dense() first")
    if x.is_nested:
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor; call on x.unbind()'s parts")
    return x


def check_mode(mode: object) -> str:
    """Check that ``mode`` is "inverted" or "classic"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


def check_mask_storage(mask_storage: object) -> str:
    """Check that ``mask_storage`` is "bits", "seed" or "bool"."""
    if mask_storage not in MASK_STORAGES:
        raise ValueError(f"mask_storage must be one of {MASK_STORAGES}, got {mask_storage!r}")
    return mask_storage  # type: ignore[return-value]


def check_dims(dims: object, ndim: int, name: str = "shared_dims") -> tuple[int, ...]:
    """Normalize a sequence of dimensions against a rank: negatives wrap, duplicates and
    out-of-range values raise ValueError."""
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        raise TypeError(f"{name} must be a sequence of ints, got {dims!r}")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name} must contain ints, got {d!r} in {dims!r}")
        if not -ndim <= d < max(ndim, 1) or ndim == 0:
            raise ValueError(f"{name} entry {d} is out of range for an input of rank {ndim}")
        out.append(int(d) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated dimensions: {tuple(dims)!r}")
    return tuple(sorted(out))


def check_dims_syntax(dims: object, name: str = "shared_dims") -> tuple[int, ...]:
    """Check a dims argument at construction time, before the input rank is known."""
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        raise TypeError(f"{name} must be a sequence of ints, got {dims!r}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name} must contain ints, got {d!r} in {dims!r}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"{name} has repeated dimensions: {tuple(dims)!r}")
    return tuple(int(d) for d in dims)
