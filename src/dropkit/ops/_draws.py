"""Keep-masks, uniforms and normals from the stream, without autograd: one body per draw, run
eagerly or as the custom op torch.compile sees."""

from __future__ import annotations

import torch

from dropkit.backends.contract import HOST
from dropkit.ops._dispatch import (
    _tracing_state,
    as_tensors,
    compiling,
    position,
    refuse_tracing,
    route,
)
from dropkit.ops._inputs import faking


def _keep_mask_body(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, threshold: int, device: torch.device
) -> torch.Tensor:
    backend = route("keep_mask", device.type)
    return backend.keep_mask(numel, *position(backend, seed, offset, device), threshold, device)


def _uniform_body(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    backend = route("uniform", device.type)
    return backend.uniform(numel, *position(backend, seed, offset, device), dtype, device)


def _normal_body(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    backend = route("normal", device.type)
    return backend.normal(numel, *position(backend, seed, offset, device), dtype, device)


_OPS = {
    name: torch.library.custom_op(f"dropkit::{name}", body, mutates_args=())
    for name, body in (("keep_mask", _keep_mask_body), ("uniform", _uniform_body), ("normal", _normal_body))
}
_OPS["keep_mask"].register_fake(
    lambda seed, offset, numel, threshold, device: torch.empty((numel,), dtype=torch.bool, device=device))
for _name in ("uniform", "normal"):
    _OPS[_name].register_fake(
        lambda seed, offset, numel, dtype, device: torch.empty((numel,), dtype=dtype, device=device))


def _draw(name, body, seed, offset, *args):
    if _tracing_state() is not None:
        refuse_tracing()
    if compiling():
        return _OPS[name](*as_tensors(seed, offset), *args)
    return body(seed, offset, *args)


def keep_mask(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, device: torch.device
) -> torch.Tensor:
    """Flat bool keep-mask of ``numel`` elements: element ``i`` is kept iff word ``i >= threshold``.

    Example:
        >>> keep_mask(4, 0, 0, 0, torch.device("cpu")).tolist()
        [True, True, True, True]
    """
    if faking(device):
        return torch.empty((numel,), dtype=torch.bool, device=device)  # fake: nothing to draw into
    if type(seed) is int and type(offset) is int and _tracing_state() is None:
        # Host positions: eager code, no compile check (the per-call path of the mask layers).
        backend = route("keep_mask", device.type)
        if backend.position == HOST:
            return backend.keep_mask(numel, seed, offset, threshold, device)
    return _draw("keep_mask", _keep_mask_body, seed, offset, numel, threshold, device)


def uniform(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``numel`` uniforms in (0, 1) from ``numel`` stream words: ``u = ((w >> 8) + 0.5) * 2**-24``.

    Example:
        >>> u = uniform(1000, 0, 0, torch.float32, torch.device("cpu"))
        >>> bool((u > 0).all() and (u < 1).all())
        True
    """
    if faking(device):
        return torch.empty((numel,), dtype=dtype, device=device)
    return _draw("uniform", _uniform_body, seed, offset, numel, dtype, device)


def normal(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``numel`` standard normals by Box-Muller from ``2 * ceil(numel / 2)`` stream words.

    Example:
        >>> z = normal(100000, 0, 0, torch.float64, torch.device("cpu"))
        >>> abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
        True
    """
    if faking(device):
        return torch.empty((numel,), dtype=dtype, device=device)
    return _draw("normal", _normal_body, seed, offset, numel, dtype, device)
