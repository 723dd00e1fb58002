"""dropkit's operators: the only door to the backends, and the only module that knows about
torch.compile.

Every random draw of the family passes through here: dropout with its backward
(:func:`dropout`), keep-masks (:func:`keep_mask`), uniforms and normals (:func:`uniform`,
:func:`normal`), and the fused dropout-add-norm (:func:`dropout_add_norm`). Each picks a backend
from the tensor's device and dtype: the native CPU kernel for CPU tensors, Triton for CUDA
tensors, and the reference backend for everything else, for an operation the preferred backend
does not implement, or when it cannot load (reported once, with a warning that points at the
caller's line).

**Positions.** A stream position is ``(seed, offset)``: Python ints on the host, or 0-dim int64
tensors holding their bits (a GPU layer's buffers, or anything under torch.compile). Backends
say which form they read (``POSITION = "host"`` or ``"device"``) and this module hands them that
form: tensors become ints for host backends (a free read for CPU tensors), ints become device
tensors for device backends, so a GPU kernel reads its position from memory and never syncs.

**One autograd definition.** :class:`_Dropout` is the only autograd code. In eager mode its
forward and backward call the backend directly; under torch.compile they call the custom ops
``dropkit::dropout_fwd`` / ``dropkit::dropout_bwd`` (opaque to the compiler, with fake kernels
for shapes), so the compiled graph neither bakes in a mask nor recompiles per step. The
custom-op dispatcher is skipped in eager mode because it costs more per call than the whole
kernel on the small tensors of an MLP.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from dropkit import _torch
from dropkit.backends import reference
from dropkit.backends.reference import opmath_dtype
from dropkit.rng import seed_to_signed, signed_to_seed

__all__ = [
    "MASK_STORAGES",
    "opmath_dtype",
    "compiling",
    "refuse_tracing",
    "backend_for",
    "backend_name",
    "use_backend",
    "dropout",
    "keep_mask",
    "bcast_dropout",
    "alpha",
    "drop_block",
    "uniform",
    "normal",
    "dropout_forward",
    "dropout_backward",
    "fuses_attention",
    "attention",
    "fuses_dropout_add_norm",
    "dropout_add_norm",
]

MASK_STORAGES = ("bits", "seed", "bool")

compiling = torch.compiler.is_compiling

# Device type -> module path of the preferred backend.
_PREFERRED = {"cpu": "dropkit.backends.cpu", "cuda": "dropkit.backends.triton"}
_loaded: dict[str, ModuleType | None] = {}
_load_lock = threading.Lock()
_forced = threading.local()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside dropkit (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


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
                    stacklevel=_caller_stacklevel(),
                )
        return _loaded[path]


# Read once: backend_for runs on every call, and an environment lookup costs microseconds.
_ENV_BACKEND = os.environ.get("DROPKIT_BACKEND") or None
_by_device: dict[str, ModuleType] = {}


def backend_for(device: torch.device, dtype: torch.dtype | None = None) -> ModuleType:
    """The backend module that runs ops for tensors of ``dtype`` on ``device``.

    ``DROPKIT_BACKEND=reference`` in the environment (read when dropkit is imported), or
    :func:`use_backend`, forces a backend. A backend that does not handle ``dtype`` (its
    ``DTYPES``) leaves the call to the reference backend.

    Example:
        >>> backend_for(torch.device("cpu")).__name__.rsplit(".", 1)[-1] in ("cpu", "reference")
        True
    """
    forced = getattr(_forced, "name", None) or _ENV_BACKEND
    if forced in (None, "auto"):
        backend = _by_device.get(device.type)
        if backend is None:
            path = _PREFERRED.get(device.type)
            backend = _by_device[device.type] = (_load(path) if path else None) or reference
    elif forced == "reference":
        return reference
    else:
        names = {"native": _PREFERRED["cpu"], "cpu": _PREFERRED["cpu"], "triton": _PREFERRED["cuda"]}
        path = names.get(forced)
        if path is None:
            raise ValueError(f"unknown dropkit backend {forced!r}; use auto, reference, native or triton")
        backend = _load(path) or reference
    if dtype is not None and backend.DTYPES is not None and dtype not in backend.DTYPES:
        return reference
    return backend


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


def _position(
    backend: ModuleType, seed: int | torch.Tensor, offset: int | torch.Tensor, device: torch.device
) -> tuple:
    """``(seed, offset)`` in the form ``backend`` reads (see the module docstring)."""
    if backend.POSITION == "host":
        if type(seed) is not int:
            seed = signed_to_seed(int(seed))
        if type(offset) is not int:
            offset = signed_to_seed(int(offset))
        return seed, offset
    if type(seed) is int:
        seed = torch.tensor(seed_to_signed(seed), dtype=torch.int64).to(device, non_blocking=True)
    if type(offset) is int:
        offset = torch.tensor(seed_to_signed(offset), dtype=torch.int64).to(device, non_blocking=True)
    return seed, offset


def _as_tensor(value: int | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(seed_to_signed(value), dtype=torch.int64)


# ---- The custom ops: what torch.compile sees. Eager code calls the backends directly. ----


def _saved_like(x: torch.Tensor, storage: str) -> torch.Tensor:
    n = x.numel()
    if storage == "bits":
        return x.new_empty(((n + 7) // 8,), dtype=torch.uint8)
    if storage == "bool":
        return x.new_empty((n,), dtype=torch.bool)
    return x.new_empty((0,), dtype=torch.uint8)


@torch.library.custom_op("dropkit::dropout_fwd", mutates_args=())
def _dropout_fwd_op(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, threshold: int, scale: float, storage: str
) -> tuple[torch.Tensor, torch.Tensor]:
    backend = backend_for(x.device, x.dtype)
    return backend.dropout_forward(x, *_position(backend, seed, offset, x.device), threshold, scale, storage)


@_dropout_fwd_op.register_fake
def _(x, seed, offset, threshold, scale, storage):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _saved_like(x, storage)


@torch.library.custom_op("dropkit::dropout_bwd", mutates_args=())
def _dropout_bwd_op(
    grad: torch.Tensor,
    saved: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    backend = backend_for(grad.device, grad.dtype)
    position = _position(backend, seed, offset, grad.device)
    return backend.dropout_backward(grad, saved, *position, threshold, scale, storage)


@_dropout_bwd_op.register_fake
def _(grad, saved, seed, offset, threshold, scale, storage):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


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


# ---- The one autograd definition ----


def _forward(x, seed, offset, threshold, scale, storage):
    if compiling():
        return _dropout_fwd_op(x, _as_tensor(seed), _as_tensor(offset), threshold, scale, storage)
    backend = backend_for(x.device, x.dtype)
    return backend.dropout_forward(x, *_position(backend, seed, offset, x.device), threshold, scale, storage)


def _backward(grad, saved, seed, offset, threshold, scale, storage):
    if compiling():
        return _dropout_bwd_op(grad, saved, _as_tensor(seed), _as_tensor(offset), threshold, scale, storage)
    backend = backend_for(grad.device, grad.dtype)
    position = _position(backend, seed, offset, grad.device)
    return backend.dropout_backward(grad, saved, *position, threshold, scale, storage)


def _host_cpu_backend(x: torch.Tensor) -> ModuleType | None:
    """The backend for ``x`` when it is a host backend that eager code may call without the
    general dispatch (the common CPU case), else None. Cached per (device type, dtype)."""
    key = (x.device.type, x.dtype, getattr(_forced, "name", None))
    backend = _host_routes.get(key, False)
    if backend is False:
        chosen = backend_for(x.device, x.dtype)
        backend = _host_routes[key] = chosen if chosen.POSITION == "host" else None
    return backend


_host_routes: dict[tuple, ModuleType | None] = {}


class _Dropout(torch.autograd.Function):
    """``y = where(keep, x * scale, 0)``; its backward is the same map of the gradient (linear,
    with the same mask), so the backward's own backward is itself: higher orders come free."""

    @staticmethod
    def forward(ctx, x, saved, seed, offset, threshold, scale, storage):
        # Host positions (ints) only exist in eager code: the hot CPU path skips the dispatch.
        backend = _host_cpu_backend(x) if type(seed) is int and type(offset) is int else None
        if saved is None:
            if backend is not None:
                y, saved = backend.dropout_forward(x, seed, offset, threshold, scale, storage)
            else:
                y, saved = _forward(x, seed, offset, threshold, scale, storage)
        else:  # applying the backward map: x is a gradient
            y = _backward(x, saved, seed, offset, threshold, scale, storage)
        ctx.save_for_backward(saved)
        ctx.args = (seed, offset, threshold, scale, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable too
            grad_x = _Dropout.apply(grad_y, saved, *ctx.args)
        else:
            seed, offset, threshold, scale, storage = ctx.args
            backend = _host_cpu_backend(grad_y) if type(seed) is int and type(offset) is int else None
            if backend is not None:
                grad_x = backend.dropout_backward(grad_y, saved, seed, offset, threshold, scale, storage)
            else:
                grad_x = _backward(grad_y, saved, seed, offset, threshold, scale, storage)
        return grad_x, None, None, None, None, None, None


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
    (docs/rng.md); ``storage`` says what backward reads ("bits", "seed" or "bool").

    Example:
        >>> x = torch.ones(6)
        >>> torch.equal(dropout(x, 1, 0, 2**31, 2.0, "bits"), keep_mask(6, 1, 0, 2**31, x.device) * 2.0)
        True
    """
    if _tracing_state() is not None:
        refuse_tracing()
    if _functorch_active():
        return _Dropout.apply(x, None, seed, offset, threshold, scale, storage)
    return _dropout_apply(x, None, seed, offset, threshold, scale, storage)


_dropout_apply = _torch.function_apply(_Dropout)
_functorch_active = _torch.functorch_active
_tracing_state = _torch.tracing_state


def refuse_tracing() -> None:
    """Raise the RuntimeError that explains why a random draw cannot be traced."""
    # torch.jit.trace (and the legacy ONNX exporter, which traces) would record this call's
    # random draw as a constant of the graph: every run of the traced model would reuse it.
    raise RuntimeError(
        "dropkit's random draws cannot be traced (torch.jit.trace, or torch.onnx.export with "
        "training=TrainingMode.TRAINING): the trace would hold one fixed mask. Trace or export the "
        "model in eval mode"
    )


# ---- Masks with broadcast dims, alpha dropout, DropBlock: one pass over the full tensor ----
#
# Each is a pair of backend functions (forward -> (y, saved[, scale]), backward -> grad_in) over a
# mask of a reduced shape; the pairs differ only in their parameters:
#   "bcast":     where(keep, x * scale, 0)        params (scale,)           backward params (scale,)
#   "alpha":     where(keep, a x + b, fill)       params (a, b, fill)       backward params (a,)
#   "dropblock": where(keep, x * count/kept, 0)   params (shared_channels,) backward params (shared, scale)
# ``shape_arg`` is the reduced mask shape ("bcast", "alpha") or the block size ("dropblock").
_MASKED = {
    "bcast": ("bcast_dropout_forward", "bcast_dropout_backward"),
    "alpha": ("alpha_forward", "alpha_backward"),
    "dropblock": ("dropblock_forward", "dropblock_backward"),
}


def _masked_backend(kind: str, x: torch.Tensor) -> ModuleType:
    backend = backend_for(x.device, x.dtype)
    if not hasattr(backend, _MASKED[kind][0]):
        return reference
    supports = getattr(backend, "supports_layout", None)
    return reference if supports is not None and not supports(x, tuple(x.shape)) else backend


def _masked_forward(kind, x, shape_arg, seed, offset, threshold, params, storage):
    """``(y, saved, extra)`` from the backend; ``extra`` is DropBlock's scale (else 0.0)."""
    backend = _masked_backend(kind, x)
    seed, offset = _position(backend, seed, offset, x.device)
    out = getattr(backend, _MASKED[kind][0])(x, shape_arg, seed, offset, threshold, *params, storage)
    return out[0], out[1], (out[2] if len(out) > 2 else 0.0)


def _bwd_params(kind: str, params: tuple) -> tuple:
    return params[:1]  # bcast: (scale,); alpha: (a,); dropblock: (shared_channels,)


def _masked_backward(kind, grad, saved, shape_arg, seed, offset, threshold, bparams, extra, storage):
    backend = _masked_backend(kind, grad)
    seed, offset = _position(backend, seed, offset, grad.device)
    if kind == "dropblock":
        bparams = (bool(bparams[0]), float(extra))
    backward = getattr(backend, _MASKED[kind][1])
    return backward(grad, saved, shape_arg, seed, offset, threshold, *bparams, storage)


@torch.library.custom_op("dropkit::masked_fwd", mutates_args=())
def _masked_fwd_op(
    x: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, kind: str, shape_arg: list[int],
    threshold: int, params: list[float], storage: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if kind == "dropblock":
        params = [bool(params[0])]
    shape = tuple(shape_arg)
    y, saved, extra = _masked_forward(kind, x, shape, seed, offset, threshold, tuple(params), storage)
    return y, saved, torch.tensor(extra, dtype=torch.float64)


@_masked_fwd_op.register_fake
def _(x, seed, offset, kind, shape_arg, threshold, params, storage):
    if kind == "dropblock":
        n = x.shape[0] * (1 if params[0] else x.shape[1]) * math.prod(x.shape[2:])
    else:
        n = math.prod(shape_arg)
    size = {"bits": (n + 7) // 8, "bool": n}.get(storage, 0)
    saved = x.new_empty((size,), dtype=torch.bool if storage == "bool" else torch.uint8)
    return torch.empty_like(x), saved, x.new_empty((), dtype=torch.float64)


@torch.library.custom_op("dropkit::masked_bwd", mutates_args=())
def _masked_bwd_op(
    grad: torch.Tensor, saved: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, kind: str,
    shape_arg: list[int], threshold: int, bparams: list[float], extra: torch.Tensor, storage: str,
) -> torch.Tensor:
    return _masked_backward(kind, grad, saved, tuple(shape_arg), seed, offset, threshold, tuple(bparams),
                            extra.item(), storage)


@_masked_bwd_op.register_fake
def _(grad, saved, seed, offset, kind, shape_arg, threshold, bparams, extra, storage):
    return torch.empty_like(grad)


def _run_masked_fwd(kind, x, shape_arg, seed, offset, threshold, params, storage):
    if compiling():
        return _masked_fwd_op(x, _as_tensor(seed), _as_tensor(offset), kind, list(shape_arg), threshold,
                              [float(v) for v in params], storage)
    return _masked_forward(kind, x, shape_arg, seed, offset, threshold, params, storage)


def _run_masked_bwd(kind, grad, saved, shape_arg, seed, offset, threshold, bparams, extra, storage):
    if compiling():
        if not isinstance(extra, torch.Tensor):
            extra = torch.tensor(float(extra), dtype=torch.float64)
        return _masked_bwd_op(grad, saved, _as_tensor(seed), _as_tensor(offset), kind, list(shape_arg),
                              threshold, [float(v) for v in bparams], extra, storage)
    return _masked_backward(kind, grad, saved, shape_arg, seed, offset, threshold, bparams, extra, storage)


class _MaskedGrad(torch.autograd.Function):
    """The backward map ``where(keep, c * grad, 0)``: linear with the same mask, its own adjoint."""

    @staticmethod
    def forward(ctx, grad, saved, args):
        ctx.save_for_backward(saved)
        ctx.args = args
        return _run_masked_bwd(args[0], grad, saved, *args[1:])

    @staticmethod
    def backward(ctx, gg):
        (saved,) = ctx.saved_tensors
        return _MaskedGrad.apply(gg.contiguous(), saved, ctx.args), None, None


class _Masked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, shape_arg, seed, offset, threshold, params, storage):
        y, saved, extra = _run_masked_fwd(kind, x, shape_arg, seed, offset, threshold, params, storage)
        ctx.save_for_backward(saved)
        # (kind, shape_arg, seed, offset, threshold, backward params, DropBlock's scale, storage)
        ctx.args = (kind, shape_arg, seed, offset, threshold, _bwd_params(kind, params), extra, storage)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        if torch.is_grad_enabled():
            grad_x = _MaskedGrad.apply(grad_y, saved, ctx.args)
        else:
            grad_x = _run_masked_bwd(ctx.args[0], grad_y, saved, *ctx.args[1:])
        return grad_x, None, None, None, None, None, None, None


def _masked(kind, x, shape_arg, seed, offset, threshold, params, storage) -> torch.Tensor:
    if _tracing_state() is not None:
        refuse_tracing()
    if not (x.requires_grad and torch.is_grad_enabled()):
        storage = "seed"  # nothing will be needed for backward
    apply = _Masked.apply if _functorch_active() else _masked_apply
    return apply(x, kind, tuple(shape_arg), seed, offset, threshold, tuple(params), storage)


_masked_apply = _torch.function_apply(_Masked)


def bcast_dropout(
    x: torch.Tensor, mask_shape: tuple[int, ...], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """Dropout with a mask of the reduced ``mask_shape`` (each dim 1 or x's), applied to the whole
    ``x`` in one pass, with autograd: ``where(keep[broadcast], x * scale, 0)``. The mask takes
    ``prod(mask_shape)`` words; backward keeps 1 bit per mask entry ("bits") or nothing.

    Example:
        >>> x = torch.ones(2, 3, 4)
        >>> y = bcast_dropout(x, (2, 3, 1), 5, 0, 2**31, 2.0, "bits")
        >>> keep = keep_mask(6, 5, 0, 2**31, x.device).view(2, 3, 1)
        >>> torch.equal(y, torch.where(keep, x * 2.0, torch.zeros(())))
        True
    """
    return _masked("bcast", x, mask_shape, seed, offset, threshold, (scale,), storage)


def alpha(
    x: torch.Tensor, mask_shape: tuple[int, ...], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, a: float, b: float, fill: float, storage: str,
) -> torch.Tensor:
    """Alpha dropout's replacement in one pass, with autograd: ``where(keep, a x + b, fill)``.

    Example:
        >>> x = torch.zeros(64)
        >>> y = alpha(x, (64,), 1, 0, 2**31, 2.0, 0.5, -1.0, "seed")
        >>> sorted(set(y.tolist()))
        [-1.0, 0.5]
    """
    return _masked("alpha", x, mask_shape, seed, offset, threshold, (a, b, fill), storage)


def drop_block(
    x: torch.Tensor, block_size: tuple[int, ...], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, shared_channels: bool, storage: str,
) -> torch.Tensor:
    """DropBlock on a batched ``x`` (N, C, *spatial) in one pass, with autograd: block mask from
    the seed grid, then ``where(keep, x * count / kept, 0)``; ``block_size`` is clipped already.

    Example:
        >>> y = drop_block(torch.ones(1, 1, 6, 6), (3, 3), 0, 0, 2**30, False, "bits")
        >>> y.shape
        torch.Size([1, 1, 6, 6])
    """
    return _masked("dropblock", x, block_size, seed, offset, threshold, (bool(shared_channels),), storage)


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
    if compiling():
        return _normal_op(_as_tensor(seed), _as_tensor(offset), numel, dtype, device)
    backend = _noise_backend(device, "normal")
    return backend.normal(numel, *_position(backend, seed, offset, device), dtype, device)


def dropout_forward(
    x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(where(keep, x * scale, 0), saved)`` of a contiguous ``x``, without autograd: for
    autograd Functions of their own (attention) that need the saved mask back.

    Example:
        >>> y, bits = dropout_forward(torch.ones(8), 1, 0, 2**31, 2.0, "bits")
        >>> torch.equal(dropout_backward(torch.ones(8), bits, 1, 0, 2**31, 2.0, "bits"), y)
        True
    """
    return _forward(x, seed, offset, threshold, scale, storage)


def dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``where(keep, grad * scale, 0)`` with the mask from ``saved`` (or the stream), no autograd."""
    return _backward(grad, saved, seed, offset, threshold, scale, storage)


def fuses_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    enable_gqa: bool,
) -> bool:
    """Whether a backend runs attention with dropout as one kernel for these tensors (Triton).

    Example:
        >>> q = torch.ones(1, 1, 2, 4)
        >>> fuses_attention(q, q, q, None, False)
        False
    """
    fused = getattr(backend_for(query.device, query.dtype), "fused_attention", None)
    return fused is not None and fused().supports(query, key, value, attn_mask, enable_gqa)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float, threshold: int, drop_scale: float, seed: int | torch.Tensor, offset: int | torch.Tensor,
) -> torch.Tensor:
    """The fused attention-with-dropout kernel, where :func:`fuses_attention` says one exists."""
    backend = backend_for(query.device, query.dtype)
    seed, offset = _position(backend, seed, offset, query.device)
    return backend.fused_attention().attention(
        query, key, value, attn_mask, is_causal, scale, threshold, drop_scale, seed, offset
    )


def fuses_dropout_add_norm(x: torch.Tensor) -> bool:
    """Whether a backend fuses :func:`dropout_add_norm` for ``x`` (Triton, rows that fit).

    Example:
        >>> fuses_dropout_add_norm(torch.ones(2, 4))
        False
    """
    fused = getattr(backend_for(x.device, x.dtype), "fused_norm", None)
    return fused is not None and 0 < x.shape[-1] <= fused().MAX_COLUMNS and x.numel() > 0


def dropout_add_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
    threshold: int,
    scale: float,
    active: bool,
    rms: bool,
    eps: float,
    save_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused ``(norm(dropout(x) + residual), dropout(x) + residual)`` of contiguous 2-D
    ``(M, N)`` tensors, where :func:`fuses_dropout_add_norm` says a backend fuses it."""
    backend = backend_for(x.device, x.dtype)
    seed, offset = _position(backend, seed, offset, x.device)
    return backend.fused_norm().FusedDropoutAddNorm.apply(
        x, residual, weight, bias, seed, offset, threshold, scale, active, rms, eps, save_mask
    )
