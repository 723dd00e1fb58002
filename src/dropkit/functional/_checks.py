"""Argument checks shared by every dropout-family function and layer."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from dropkit import _torch, ops
from dropkit.ops import MASK_STORAGES
from dropkit.rng import DrawnStream, Stream, TensorStream, check_seed, seed_to_signed, signed_to_seed

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


def check_generator(generator: object) -> torch.Generator | None:
    """Check that ``generator`` is None or a torch.Generator (TypeError naming it otherwise)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r} of type "
                        f"{type(generator).__name__}")
    return generator


def check_position(value: object, name: str) -> int | torch.Tensor:
    """Check a ``seed`` or ``offset`` argument: an int in [0, 2**64), or a one-element integer
    tensor holding its two's-complement int64 bits (a seeded layer's buffer, say).

    Raises:
        TypeError: for a float, bool or complex tensor (never truncated) or another type.
        ValueError: for an int outside [0, 2**64) or a tensor of more than one element.
    """
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an int or an integer tensor, got a {value.dtype} tensor "
                            f"({value!r}); a stream position is never rounded")
        if value.numel() != 1:
            raise ValueError(f"{name} must be a one-element tensor, got shape {tuple(value.shape)}")
        return value.reshape(()).to(torch.int64)
    return check_seed(value, name)


def open_stream(
    seed: int | torch.Tensor | None,
    offset: int | torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device,
) -> object:
    """The stream a functional call draws from, built from its ``seed``, ``offset`` and
    ``generator`` arguments (checked here, once).

    ``seed=None`` draws a fresh seed from ``generator`` (torch's default generator if None) at
    the first draw. On the CPU the position travels as Python ints (:class:`dropkit.rng.Stream`);
    on other devices and under torch.compile as tensors on ``device``
    (:class:`dropkit.rng.TensorStream`), so that no value is read back to the host.
    """
    generator = check_generator(generator)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if _torch.tracing_state() is not None:
        return _TracedStream()
    if seed is not None:
        seed = check_position(seed, "seed")
    offset = check_position(offset, "offset")
    if device.type in ("cpu", "meta") and not ops.compiling():  # meta: host positions, no data
        if isinstance(offset, torch.Tensor):
            offset = signed_to_seed(int(offset))
        if seed is None:
            return DrawnStream(generator) if offset == 0 else _drawn_at(generator, offset)
        return Stream(signed_to_seed(int(seed)) if isinstance(seed, torch.Tensor) else seed, offset)
    if isinstance(seed, int):
        seed = torch.tensor(seed_to_signed(seed), dtype=torch.int64)
    if isinstance(offset, int):
        offset = torch.tensor(seed_to_signed(offset), dtype=torch.int64)
    seed = None if seed is None else seed.to(device)
    # The stream advances its offset in place: never the caller's own tensor.
    return TensorStream(seed, offset.to(device, copy=True), generator)


class _TracedStream:
    """Under torch.jit.trace a draw would become a constant of the trace: refuse at the first."""

    def take(self, words: int) -> tuple[int, int]:
        ops.refuse_tracing()
        raise AssertionError("unreachable")


def _drawn_at(generator: torch.Generator | None, offset: int) -> DrawnStream:
    stream = DrawnStream(generator)
    stream.offset = offset
    return stream
