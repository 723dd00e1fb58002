"""Keep-masks, uniforms and normals from the stream, without autograd."""

from __future__ import annotations

from types import ModuleType

import torch

from dropkit.backends import reference
from dropkit.ops._dispatch import (
    _as_tensor,
    _position,
    _tracing_state,
    backend_for,
    compiling,
    host_backend,
    refuse_tracing,
)
from dropkit.ops._inputs import faking


@torch.library.custom_op("dropkit::keep_mask", mutates_args=())
def _keep_mask_op(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, threshold: int, device: torch.device
) -> torch.Tensor:
    backend = backend_for(device)
    return backend.keep_mask(numel, *_position(backend, seed, offset, device), threshold, device)


@_keep_mask_op.register_fake
def _(seed, offset, numel, threshold, device):
    return torch.empty((numel,), dtype=torch.bool, device=device)


@torch.library.custom_op("dropkit::uniform", mutates_args=())
def _uniform_op(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    backend = _noise_backend(device, "uniform")
    return backend.uniform(numel, *_position(backend, seed, offset, device), dtype, device)


@_uniform_op.register_fake
def _(seed, offset, numel, dtype, device):
    return torch.empty((numel,), dtype=dtype, device=device)


@torch.library.custom_op("dropkit::normal", mutates_args=())
def _normal_op(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    backend = _noise_backend(device, "normal")
    return backend.normal(numel, *_position(backend, seed, offset, device), dtype, device)


@_normal_op.register_fake
def _(seed, offset, numel, dtype, device):
    return torch.empty((numel,), dtype=dtype, device=device)


def keep_mask(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, device: torch.device
) -> torch.Tensor:
    """Flat bool keep-mask of ``numel`` elements: element ``i`` is kept iff word ``i >= threshold``.

    Example:
        >>> keep_mask(4, 0, 0, 0, torch.device("cpu")).tolist()
        [True, True, True, True]
    """
    if _tracing_state() is not None:
        refuse_tracing()
    if faking(device):
        return torch.empty((numel,), dtype=torch.bool, device=device)  # fake: nothing to draw into
    if type(seed) is int and type(offset) is int:  # host positions: eager code, no compile check
        backend = host_backend(device.type, None)
        if backend is not None:
            return backend.keep_mask(numel, seed, offset, threshold, device)
    if compiling():
        return _keep_mask_op(_as_tensor(seed), _as_tensor(offset), numel, threshold, device)
    backend = backend_for(device)
    return backend.keep_mask(numel, *_position(backend, seed, offset, device), threshold, device)


def _noise_backend(device: torch.device, op: str) -> ModuleType:
    backend = backend_for(device)
    return backend if hasattr(backend, op) else reference


def uniform(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``numel`` uniforms in (0, 1) from ``numel`` stream words: ``u = ((w >> 8) + 0.5) * 2**-24``.

    Example:
        >>> u = uniform(1000, 0, 0, torch.float32, torch.device("cpu"))
        >>> bool((u > 0).all() and (u < 1).all())
        True
    """
    if _tracing_state() is not None:
        refuse_tracing()
    if faking(device):
        return torch.empty((numel,), dtype=dtype, device=device)
    if compiling():
        return _uniform_op(_as_tensor(seed), _as_tensor(offset), numel, dtype, device)
    backend = _noise_backend(device, "uniform")
    return backend.uniform(numel, *_position(backend, seed, offset, device), dtype, device)


def normal(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``numel`` standard normals by Box-Muller from ``2 * ceil(numel / 2)`` stream words.

    Example:
        >>> z = normal(100000, 0, 0, torch.float64, torch.device("cpu"))
        >>> abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
        True
    """
    if _tracing_state() is not None:
        refuse_tracing()
    if faking(device):
        return torch.empty((numel,), dtype=dtype, device=device)
    if compiling():
        return _normal_op(_as_tensor(seed), _as_tensor(offset), numel, dtype, device)
    backend = _noise_backend(device, "normal")
    return backend.normal(numel, *_position(backend, seed, offset, device), dtype, device)
