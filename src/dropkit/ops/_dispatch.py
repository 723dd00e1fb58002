"""Backend choice and stream positions: what every op of dropkit.ops shares."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from dropkit import _torch
from dropkit.backends import reference
from dropkit.rng import seed_to_signed, signed_to_seed

MASK_STORAGES = ("bits", "seed", "bool")

compiling = torch.compiler.is_compiling

# Device type -> module path of the preferred backend.
_PREFERRED = {"cpu": "dropkit.backends.cpu", "cuda": "dropkit.backends.triton"}
_loaded: dict[str, ModuleType | None] = {}
_load_lock = threading.Lock()
_forced = threading.local()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # dropkit/


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


def _forced_name() -> str | None:
    """The backend :func:`use_backend` forces in this thread (None: not forced)."""
    return getattr(_forced, "name", None)


def host_backend(device_type: str, dtype: torch.dtype | None) -> ModuleType | None:
    """The backend for ``(device_type, dtype)`` when it reads host positions (the common CPU
    case), else None; cached, for the per-call paths that skip the general dispatch."""
    key = (device_type, dtype, getattr(_forced, "name", None))
    backend = _host_routes.get(key, False)
    if backend is False:
        chosen = backend_for(torch.device(device_type), dtype)
        backend = _host_routes[key] = chosen if chosen.POSITION == "host" else None
    return backend


_host_routes: dict[tuple, ModuleType | None] = {}
