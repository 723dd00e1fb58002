"""Backend choice and stream positions: what every op of dropkit.ops shares.

Every op asks :func:`backend_of` (with its input tensor) or :func:`route` (a draw with no input)
which backend runs its kernel; both read one cache, filled by :func:`_choose` from the backends'
:class:`dropkit.backends.contract.Backend` records, and hand the position over in the form the
backend reads with :func:`position`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator

import torch

from dropkit import _torch
from dropkit.backends import reference
from dropkit.backends.contract import HOST, Backend
from dropkit.rng import Position, refuse_tracing, seed_to_signed  # noqa: F401 (ops' name for refuse_tracing)

MASK_STORAGES = ("bits", "seed", "bool")

compiling = torch.compiler.is_compiling

REFERENCE = reference.BACKEND
# Device type -> module path of the preferred backend.
_PREFERRED = {"cpu": "dropkit.backends.cpu", "cuda": "dropkit.backends.triton"}
_NAMES = {"native": _PREFERRED["cpu"], "cpu": _PREFERRED["cpu"], "triton": _PREFERRED["cuda"]}
_loaded: dict[str, Backend | None] = {}
_load_lock = threading.Lock()
_forced = threading.local()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # dropkit/


def _caller_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside dropkit (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _load(path: str) -> Backend | None:
    """Import a backend once; on failure warn once and remember that it is unavailable."""
    with _load_lock:
        if path not in _loaded:
            try:
                backend = importlib.import_module(path).BACKEND
                if backend.error:
                    raise ImportError(backend.error)
                _loaded[path] = backend
            except ImportError as exc:
                _loaded[path] = None
                warnings.warn(
                    f"dropkit: backend {path} is unavailable ({exc}); using the reference "
                    "backend, which gives the same masks but is slower",
                    RuntimeWarning,
                    stacklevel=_caller_stacklevel(),
                )
        return _loaded[path]


# Read once: the routes are chosen on every call, and an environment lookup costs microseconds.
_ENV_BACKEND = os.environ.get("DROPKIT_BACKEND") or None

# (kernel or None, device type, dtype, backend forced in this thread) -> the backend that runs it.
# The one route cache: filled by _choose, read by route and backend_of.
_routes: dict[tuple, Backend] = {}


def _choose(kernel: str | None, device_type: str, dtype: torch.dtype | None) -> Backend:
    forced = getattr(_forced, "name", None) or _ENV_BACKEND
    if forced in (None, "auto"):
        path = _PREFERRED.get(device_type)
        backend = (_load(path) if path else None) or REFERENCE
    elif forced == "reference":
        backend = REFERENCE
    else:
        path = _NAMES.get(forced)
        if path is None:
            raise ValueError(f"unknown dropkit backend {forced!r}; use auto, reference, native or triton")
        backend = _load(path) or REFERENCE
    if not backend.runs(dtype) or (kernel is not None and not backend.provides(kernel)):
        return REFERENCE
    return backend


def route(kernel: str | None, device_type: str, dtype: torch.dtype | None = None) -> Backend:
    """The backend that runs ``kernel`` (a field of :class:`Backend`; None: any) for tensors of
    ``dtype`` on ``device_type``: the device's preferred backend (native CPU, Triton for CUDA)
    when it loads, runs ``dtype`` and provides ``kernel``, else the reference backend.

    ``DROPKIT_BACKEND=reference`` in the environment (read when dropkit is imported), or
    :func:`use_backend`, forces a backend.

    Example:
        >>> route("uniform", "cpu").name in ("cpu", "reference")
        True
    """
    key = (kernel, device_type, dtype, getattr(_forced, "name", None))
    backend = _routes.get(key)
    if backend is None:
        backend = _routes[key] = _choose(kernel, device_type, dtype)
    return backend


def backend_of(x: torch.Tensor, kernel: str) -> Backend:
    """The backend that runs ``kernel`` on ``x`` (:func:`route` for ``x``'s device and dtype): the
    door every op with an input tensor passes, once per call.

    Example:
        >>> backend_of(torch.ones(2), "dropout_forward").name in ("cpu", "reference")
        True
    """
    if type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter and _torch.tensor_kind(x) == "fake":
        return REFERENCE  # no memory to read (a backward under FakeTensorMode): torch ops give shapes
    # route's body written out: this is the per-call path of every op.
    key = (kernel, x.device.type, x.dtype, getattr(_forced, "name", None))
    backend = _routes.get(key)
    if backend is None:
        backend = _routes[key] = _choose(kernel, x.device.type, x.dtype)
    return backend


def backend_for(device: torch.device, dtype: torch.dtype | None = None) -> Backend:
    """The backend that runs ops for tensors of ``dtype`` on ``device`` (:func:`route` of any kernel).

    Example:
        >>> backend_for(torch.device("cpu")).name in ("cpu", "reference")
        True
    """
    return route(None, device.type, dtype)


def backend_name(device: torch.device | str = "cpu") -> str:
    """Short name of the backend used for ``device`` ("reference", "cpu" or "triton").

    Example:
        >>> backend_name("cpu") in ("cpu", "reference")
        True
    """
    return backend_for(torch.device(device)).name


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


def position(backend: Backend, seed: int | torch.Tensor, offset: int | torch.Tensor,
             device: torch.device) -> Position:
    """``(seed, offset)`` in the form ``backend`` reads: ints for a host backend (a free read for
    CPU tensors), tensors on ``device`` for a device backend, so that its kernels never sync."""
    if backend.position == HOST:
        return Position(seed, offset).host()
    return Position(seed, offset).on(device)


def as_tensors(seed: int | torch.Tensor, offset: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The position as 0-dim int64 tensors, as the custom ops that torch.compile sees take it.

    A plain pair, not a :class:`Position`: compiled code only unpacks it, and torch 2.5's
    dynamo cannot build a tuple subclass."""
    if type(seed) is int:
        seed = torch.tensor(seed_to_signed(seed), dtype=torch.int64)
    if type(offset) is int:
        offset = torch.tensor(seed_to_signed(offset), dtype=torch.int64)
    return seed, offset


_functorch_active = _torch.functorch_active
_tracing_state = _torch.tracing_state


def _forced_name() -> str | None:
    """The backend :func:`use_backend` forces in this thread (None: not forced)."""
    return getattr(_forced, "name", None)
