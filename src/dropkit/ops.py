"""dropkit's operators: torch.library custom ops with fake kernels and autograd.

:func:`dropout` is the entry point. Under torch.compile it calls the custom ops; in eager mode
it calls the same backend functions through a plain autograd.Function, because the custom-op
dispatcher costs more per call than the whole kernel on the small tensors of an MLP. Both
paths run the same backend code with the same arguments, so their masks are identical.

The ops take the stream position as 0-dim int64 tensors (``seed``, ``offset``) rather than
Python ints. Under torch.compile this keeps the mask out of the graph (the kernel reads the
values when it runs) and avoids a recompilation per step, and a seeded layer can advance its
``offset`` buffer in place. Each op picks a backend from the tensor's device: the native CPU
kernel for CPU tensors, Triton for CUDA tensors, the reference backend otherwise or when the
preferred backend cannot load (reported once with a warning).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from dropkit.backends import reference
from dropkit.rng import seed_to_signed, signed_to_seed

__all__ = [
    "MASK_STORAGES",
    "backend_for",
    "backend_name",
    "use_backend",
    "dropout",
    "mask",
    "dropout_fwd",
    "dropout_bwd",
    "keep_mask",
]

MASK_STORAGES = ("bits", "seed", "bool")

# Device type -> module path of the preferred backend.
_PREFERRED = {"cpu": "dropkit.backends.cpu", "cuda": "dropkit.backends.triton"}
_loaded: dict[str, ModuleType | None] = {}
_load_lock = threading.Lock()
_forced = threading.local()


def _load(path: str) -> ModuleType | None:
    """Import a backend once; on failure warn once and remember that it is unavailable."""
    with _load_lock:
        if path not in _loaded:
            try:
                module = importlib.import_module(path)
                error = getattr(module, "load_error", lambda: None)()
                if error:
                    raise ImportError(error)
                _loaded[path] = module
            except ImportError as exc:
                _loaded[path] = None
                warnings.warn(
                    f"dropkit: backend {path} is unavailable ({exc}); using the reference "
                    "backend, which gives the same masks but is slower",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _loaded[path]


# Read once: backend_for runs on every call, and an environment lookup costs microseconds.
_ENV_BACKEND = os.environ.get("DROPKIT_BACKEND") or None
_by_device: dict[str, ModuleType] = {}


def backend_for(device: torch.device) -> ModuleType:
    """The backend module that runs ops for tensors on ``device``.

    ``DROPKIT_BACKEND=reference`` in the environment (read when dropkit is imported), or
    :func:`use_backend`, forces the reference backend.
    """
    forced = getattr(_forced, "name", None) or _ENV_BACKEND
    if forced in (None, "auto"):
        backend = _by_device.get(device.type)
        if backend is None:
            path = _PREFERRED.get(device.type)
            backend = _by_device[device.type] = (_load(path) if path else None) or reference
        return backend
    if forced == "reference":
        return reference
    path = {"native": _PREFERRED["cpu"], "cpu": _PREFERRED["cpu"], "triton": _PREFERRED["cuda"]}.get(forced)
    if path is None:
        raise ValueError(f"unknown dropkit backend {forced!r}; use auto, reference, native or triton")
    return _load(path) or reference


def backend_name(device: torch.device | str = "cpu") -> str:
    """Short name of the backend used for ``device`` ("reference", "cpu" or "triton").

    Example:
        >>> backend_name("cpu") in ("cpu", "reference")
        True
    """
    return backend_for(torch.device(device)).__name__.rsplit(".", 1)[-1]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager forcing a backend ("reference", "native", "triton" or "auto") in this thread.

    Example:
        >>> with use_backend("reference"):
        ...     backend_name("cpu")
        'reference'
    """
    if name not in ("reference", "native", "cpu", "triton", "auto"):
        raise ValueError(f"unknown dropkit backend {name!r}; use auto, reference, native or triton")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


def _stream(seed: torch.Tensor, offset: torch.Tensor) -> tuple[int, int]:
    return signed_to_seed(int(seed.item())), signed_to_seed(int(offset.item()))


def _saved_like(x: torch.Tensor, storage: str) -> torch.Tensor:
    n = x.numel()
    if storage == "bits":
        return x.new_empty(((n + 7) // 8,), dtype=torch.uint8)
    if storage == "bool":
        return x.new_empty((n,), dtype=torch.bool)
    return x.new_empty((0,), dtype=torch.uint8)


@torch.library.custom_op("dropkit::dropout_fwd", mutates_args=())
def dropout_fwd(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, threshold: int, scale: float, storage: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout forward on a contiguous ``x``; returns ``(y, saved)`` (see dropkit.backends)."""
    s, o = _stream(seed, offset)
    return backend_for(x.device).dropout_forward(x, s, o, threshold, scale, storage)


@dropout_fwd.register_fake
def _(x, seed, offset, threshold, scale, storage):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _saved_like(x, storage)


@torch.library.custom_op("dropkit::dropout_bwd", mutates_args=())
def dropout_bwd(
    grad: torch.Tensor,
    saved: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """Dropout backward: ``grad_in = where(keep, grad * scale, 0)`` for a contiguous ``grad``."""
    s, o = _stream(seed, offset)
    return backend_for(grad.device).dropout_backward(grad, saved, s, o, threshold, scale, storage)


@dropout_bwd.register_fake
def _(grad, saved, seed, offset, threshold, scale, storage):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _setup_fwd(ctx, inputs, output):
    _, seed, offset, threshold, scale, storage = inputs
    ctx.save_for_backward(output[1], seed, offset)
    ctx.threshold, ctx.scale, ctx.storage = threshold, scale, storage


def _backward_fwd(ctx, grad_y, _grad_saved):
    saved, seed, offset = ctx.saved_tensors
    grad_x = dropout_bwd(grad_y.contiguous(), saved, seed, offset, ctx.threshold, ctx.scale, ctx.storage)
    return grad_x, None, None, None, None, None


dropout_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)


def _setup_bwd(ctx, inputs, output):
    _, saved, seed, offset, threshold, scale, storage = inputs
    ctx.save_for_backward(saved, seed, offset)
    ctx.threshold, ctx.scale, ctx.storage = threshold, scale, storage


def _backward_bwd(ctx, grad_grad_in):
    # The backward map is linear with the same mask, so its own gradient is itself.
    saved, seed, offset = ctx.saved_tensors
    gg = dropout_bwd(grad_grad_in.contiguous(), saved, seed, offset, ctx.threshold, ctx.scale, ctx.storage)
    return gg, None, None, None, None, None, None


dropout_bwd.register_autograd(_backward_bwd, setup_context=_setup_bwd)


@torch.library.custom_op("dropkit::keep_mask", mutates_args=())
def keep_mask(
    seed: torch.Tensor, offset: torch.Tensor, numel: int, threshold: int, device: torch.device
) -> torch.Tensor:
    """Flat bool keep-mask of ``numel`` elements from the stream ``(seed, offset)``."""
    s, o = _stream(seed, offset)
    return backend_for(device).keep_mask(numel, s, o, threshold, device)


@keep_mask.register_fake
def _(seed, offset, numel, threshold, device):
    return torch.empty((numel,), dtype=torch.bool, device=device)


def _as_ints(seed: int | torch.Tensor, offset: int | torch.Tensor) -> tuple[int, int]:
    if isinstance(seed, torch.Tensor):
        seed = signed_to_seed(int(seed))
    if isinstance(offset, torch.Tensor):
        offset = signed_to_seed(int(offset))
    return seed, offset


def _as_tensors(seed: int | torch.Tensor, offset: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor(seed_to_signed(seed))
    if not isinstance(offset, torch.Tensor):
        offset = torch.tensor(seed_to_signed(offset))
    return seed, offset


class _EagerDropout(torch.autograd.Function):
    """Eager-mode route to the backend (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, seed, offset, threshold, scale, storage):
        backend = backend_for(x.device)
        y, saved = backend.dropout_forward(x, seed, offset, threshold, scale, storage)
        ctx.save_for_backward(saved)
        ctx.backend, ctx.args = backend, (seed, offset, threshold, scale, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable too
            grad_x = _EagerDropoutBackward.apply(grad_y.contiguous(), saved, *ctx.args)
        else:
            grad_x = ctx.backend.dropout_backward(grad_y.contiguous(), saved, *ctx.args)
        return grad_x, None, None, None, None, None


class _EagerDropoutBackward(torch.autograd.Function):
    """``where(keep, grad * scale, 0)``; linear with the same mask, so its gradient is itself."""

    @staticmethod
    def forward(ctx, grad, saved, seed, offset, threshold, scale, storage):
        ctx.save_for_backward(saved)
        ctx.args = (seed, offset, threshold, scale, storage)
        return backend_for(grad.device).dropout_backward(grad, saved, seed, offset, threshold, scale, storage)

    @staticmethod
    def backward(ctx, gg):
        (saved,) = ctx.saved_tensors
        out = _EagerDropoutBackward.apply(gg.contiguous(), saved, *ctx.args)
        return out, None, None, None, None, None, None


def dropout(
    x: torch.Tensor,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """Dropout of a contiguous ``x`` with autograd: ``where(keep, x * scale, 0)``.

    ``keep`` is the philox-v1 mask of ``x.numel()`` words at ``(seed, offset)`` and ``threshold``
    (docs/rng.md); ``storage`` says what backward reads ("bits", "seed" or "bool"). The stream
    position is given as unsigned ints or as 0-dim int64 tensors holding their bits.
    """
    if torch.compiler.is_compiling():
        return dropout_fwd(x, *_as_tensors(seed, offset), threshold, scale, storage)[0]
    return _EagerDropout.apply(x, *_as_ints(seed, offset), threshold, scale, storage)


def mask(
    seed: int | torch.Tensor, offset: int | torch.Tensor, numel: int, threshold: int, device: torch.device
) -> torch.Tensor:
    """Flat bool keep-mask of ``numel`` elements; like :func:`dropout`, ints or tensors."""
    if torch.compiler.is_compiling():
        return keep_mask(*_as_tensors(seed, offset), numel, threshold, device)
    return backend_for(device).keep_mask(numel, *_as_ints(seed, offset), threshold, device)
